"""The environment `greengrasssdk` reads, as the launcher sets it for each function instance."""

import os

MY_FUNCTION_ARN = os.environ.get("MY_FUNCTION_ARN")
AUTH_TOKEN = os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
ROUTER_FUNCTION_ARN = os.environ.get("ROUTER_FUNCTION_ARN", "arn:aws:lambda:::function:GGRouter")
SHADOW_FUNCTION_ARN = os.environ.get("SHADOW_FUNCTION_ARN", "arn:aws:lambda:::function:GGShadowService")
SECRETS_MANAGER_FUNCTION_ARN = os.environ.get(
    "SECRETS_MANAGER_FUNCTION_ARN", "arn:aws:lambda:::function:GGSecretsManager"
)
GG_DAEMON_PORT = os.environ.get("GG_DAEMON_PORT", "8000")
