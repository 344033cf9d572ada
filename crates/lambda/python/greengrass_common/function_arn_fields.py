"""Splits a Lambda function ARN into its unqualified part and qualifier (version or alias)."""


class FunctionArnFields:
    def __init__(self, function_arn):
        parts = function_arn.split(":")
        if len(parts) < 7 or parts[0] != "arn" or parts[5] != "function":
            raise ValueError("{!r} is not a Lambda function ARN".format(function_arn))
        self.unqualified_arn = ":".join(parts[:7])
        self.qualifier = parts[7] if len(parts) > 7 else ""
        self.name = parts[6]

    @staticmethod
    def build_function_arn(unqualified_arn, qualifier=None):
        return "{}:{}".format(unqualified_arn, qualifier) if qualifier else unqualified_arn
