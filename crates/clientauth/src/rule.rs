//! Device group selection rules: `thingName: <pattern>` clauses joined by `AND` (binds tighter)
//! and `OR`, no parentheses. A pattern is `[A-Za-z0-9_-]` and escaped `\:` characters with an
//! optional leading and/or trailing `*`, or `*` alone.

/// Why a selection rule does not parse: where, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "selection rule {rule:?}: at character {position}: expected {expected}; write clauses like `thingName: Sensor*` joined by AND / OR"
)]
pub struct RuleError {
    pub rule: String,
    pub position: usize,
    pub expected: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    leading_star: bool,
    trailing_star: bool,
    /// The literal part, escapes resolved (empty for `*` alone).
    literal: String,
}

impl Pattern {
    fn matches(&self, name: &str) -> bool {
        match (self.leading_star, self.trailing_star) {
            (false, false) => name == self.literal,
            (false, true) => name.starts_with(&self.literal),
            (true, false) => name.ends_with(&self.literal),
            (true, true) => name.contains(&self.literal),
        }
    }
}

/// A parsed selection rule: an OR of ANDs of thing-name patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectionRule {
    any_of: Vec<Vec<Pattern>>,
}

struct Scanner<'a> {
    rule: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl Scanner<'_> {
    fn skip_ws(&mut self) -> bool {
        let start = self.pos;
        while self.pos < self.chars.len() && self.chars[self.pos].is_whitespace() {
            self.pos += 1;
        }
        self.pos > start
    }

    fn error(&self, expected: &'static str) -> RuleError {
        RuleError {
            rule: self.rule.to_string(),
            position: self.pos,
            expected,
        }
    }

    fn keyword(&mut self, word: &str) -> bool {
        let end = self.pos + word.chars().count();
        if end <= self.chars.len() && self.chars[self.pos..end].iter().copied().eq(word.chars()) {
            self.pos = end;
            true
        } else {
            false
        }
    }

    fn clause(&mut self) -> Result<Pattern, RuleError> {
        self.skip_ws();
        if !self.keyword("thingName") {
            return Err(self.error("`thingName`"));
        }
        self.skip_ws();
        if !self.keyword(":") {
            return Err(self.error("`:` after thingName"));
        }
        self.skip_ws();
        self.pattern()
    }

    fn pattern(&mut self) -> Result<Pattern, RuleError> {
        let mut p = Pattern {
            leading_star: false,
            trailing_star: false,
            literal: String::new(),
        };
        if self.chars.get(self.pos) == Some(&'*') {
            self.pos += 1;
            p.leading_star = true;
        }
        loop {
            match self.chars.get(self.pos) {
                Some(c) if c.is_ascii_alphanumeric() || *c == '_' || *c == '-' => {
                    p.literal.push(*c);
                    self.pos += 1;
                }
                Some('\\') if self.chars.get(self.pos + 1) == Some(&':') => {
                    p.literal.push(':');
                    self.pos += 2;
                }
                Some('\\') => return Err(self.error("`:` after `\\` (the only escape)")),
                _ => break,
            }
        }
        if self.chars.get(self.pos) == Some(&'*') && !p.literal.is_empty() {
            self.pos += 1;
            p.trailing_star = true;
        }
        if p.literal.is_empty() && !p.leading_star {
            return Err(self.error("a thing name pattern of [A-Za-z0-9_-], `\\:` and `*`"));
        }
        match self.chars.get(self.pos) {
            None => Ok(p),
            Some(c) if c.is_whitespace() => Ok(p),
            Some(_) => Err(self.error(
                "the end of the pattern (`*` only at its start or end; characters [A-Za-z0-9_-] and `\\:`)",
            )),
        }
    }
}

impl SelectionRule {
    pub fn parse(rule: &str) -> Result<SelectionRule, RuleError> {
        let mut s = Scanner {
            rule,
            chars: rule.chars().collect(),
            pos: 0,
        };
        let mut any_of = vec![vec![s.clause()?]];
        loop {
            let had_ws = s.skip_ws();
            if s.pos == s.chars.len() {
                return Ok(SelectionRule { any_of });
            }
            if !had_ws {
                return Err(s.error("whitespace before AND / OR"));
            }
            let joiner_at = s.pos;
            let and = if s.keyword("AND") {
                true
            } else if s.keyword("OR") {
                false
            } else {
                return Err(s.error("AND, OR or the end of the rule"));
            };
            if !s.skip_ws() {
                s.pos = joiner_at;
                return Err(s.error("whitespace after AND / OR"));
            }
            let clause = s.clause()?;
            if and {
                any_of.last_mut().expect("never empty").push(clause);
            } else {
                any_of.push(vec![clause]);
            }
        }
    }

    /// Whether a client device with this thing name (its MQTT client id) belongs to the group.
    pub fn matches(&self, thing_name: &str) -> bool {
        self.any_of
            .iter()
            .any(|all| all.iter().all(|p| p.matches(thing_name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rule: &str, name: &str) -> bool {
        SelectionRule::parse(rule).unwrap().matches(name)
    }

    #[test]
    fn exact_prefix_suffix_contains_and_any() {
        assert!(m("thingName: Sensor1", "Sensor1"));
        assert!(!m("thingName: Sensor1", "Sensor10"));
        assert!(m("thingName: Sensor*", "Sensor10"));
        assert!(!m("thingName: Sensor*", "MySensor"));
        assert!(m("thingName: *Sensor", "MySensor"));
        assert!(!m("thingName: *Sensor", "Sensor2"));
        assert!(m("thingName: *ens*", "MySensor2"));
        assert!(!m("thingName: *ens*", "Motor"));
        assert!(m("thingName: *", "anything-at_all"));
        assert!(m("thingName:Sensor1", "Sensor1"));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let rule = "thingName: a* AND thingName: *z OR thingName: solo";
        assert!(m(rule, "abcz"));
        assert!(!m(rule, "abc"));
        assert!(m(rule, "solo"));
        assert!(!m(rule, "soloz"));
        let rule = "thingName: solo OR thingName: a* AND thingName: *z";
        assert!(m(rule, "solo"));
        assert!(m(rule, "az"));
        assert!(!m(rule, "ab"));
    }

    #[test]
    fn escaped_colon_is_a_literal_colon() {
        assert!(m(
            r"thingName: arn\:thing*",
            "arn:thing/x".replace('/', "").as_str()
        ));
        assert!(!m(r"thingName: arn\:x", "arnx"));
    }

    #[test]
    fn malformed_rules_are_refused_with_a_position() {
        for bad in [
            "",
            "thing: a",
            "thingName a",
            "thingName: ",
            "thingName: a*b",
            "thingName: a/b",
            "thingName: **",
            "thingName: a and thingName: b",
            "thingName: a ANDthingName: b",
            "thingName: a AND",
            "(thingName: a)",
            r"thingName: a\b",
            "thingName: a OR OR thingName: b",
        ] {
            let e = SelectionRule::parse(bad).expect_err(bad);
            assert_eq!(e.rule, bad);
            assert!(e.position <= bad.chars().count(), "{bad}: {e}");
        }
    }

    #[test]
    fn a_thing_name_is_matched_as_data_never_as_a_pattern() {
        assert!(!m("thingName: sensor1", "sensor*"));
        assert!(!m("thingName: sensor1", "*"));
        assert!(!m("thingName: sensor*", "*"));
        assert!(!m("thingName: *1", "*"));
        assert!(m("thingName: sensor*", "sensor*"));
    }

    #[test]
    fn keywords_are_case_sensitive() {
        assert!(SelectionRule::parse("ThingName: a").is_err());
        assert!(SelectionRule::parse("thingName: a Or thingName: b").is_err());
    }
}
