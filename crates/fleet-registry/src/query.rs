//! The fleet-indexing query subset dynamic thing groups use:
//! `field:value` terms (`*` and `?` wildcards, `"quoted values"`), `AND`, `OR`, `NOT`,
//! parentheses; adjacent terms are ANDed. Fields: `thingName`, `thingTypeName`,
//! `attributes.<name>` and `thingGroupNames` (static groups).

use crate::{RegistryError, Result};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Query {
    Term { field: String, pattern: String },
    And(Box<Query>, Box<Query>),
    Or(Box<Query>, Box<Query>),
    Not(Box<Query>),
}

/// What a query is evaluated against.
pub(crate) struct Subject<'a> {
    pub name: &'a str,
    pub thing_type: Option<&'a str>,
    pub attributes: &'a BTreeMap<String, String>,
    pub groups: &'a [String],
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open,
    Close,
    And,
    Or,
    Not,
    Term(String, String),
}

fn bad(q: &str, why: &str) -> RegistryError {
    RegistryError::Invalid(format!(
        "queryString {q:?}: {why}; use field:value terms (thingName, thingTypeName, \
         attributes.<name>, thingGroupNames) joined by AND, OR, NOT and parentheses"
    ))
}

fn tokenize(q: &str) -> Result<Vec<Tok>> {
    let mut out = Vec::new();
    let chars: Vec<char> = q.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '(' || c == ')' {
            out.push(if c == '(' { Tok::Open } else { Tok::Close });
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && !matches!(chars[i], '(' | ')' | ':') {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        if i < chars.len() && chars[i] == ':' {
            i += 1;
            let value = if i < chars.len() && chars[i] == '"' {
                i += 1;
                let vs = i;
                while i < chars.len() && chars[i] != '"' {
                    i += 1;
                }
                if i == chars.len() {
                    return Err(bad(q, "a quoted value is not closed"));
                }
                let v: String = chars[vs..i].iter().collect();
                i += 1;
                v
            } else {
                let vs = i;
                while i < chars.len() && !chars[i].is_whitespace() && !matches!(chars[i], '(' | ')')
                {
                    i += 1;
                }
                chars[vs..i].iter().collect()
            };
            if word.is_empty() || value.is_empty() {
                return Err(bad(q, "a term needs a field and a value"));
            }
            let known = matches!(
                word.as_str(),
                "thingName" | "thingTypeName" | "thingGroupNames"
            ) || word
                .strip_prefix("attributes.")
                .is_some_and(|a| !a.is_empty());
            if !known {
                return Err(bad(q, &format!("field {word:?} is not supported")));
            }
            out.push(Tok::Term(word, value));
            continue;
        }
        out.push(match word.as_str() {
            "AND" => Tok::And,
            "OR" => Tok::Or,
            "NOT" => Tok::Not,
            _ => return Err(bad(q, &format!("{word:?} is not a field:value term"))),
        });
    }
    Ok(out)
}

pub(crate) fn parse(q: &str) -> Result<Query> {
    let toks = tokenize(q)?;
    let mut pos = 0;
    let e = parse_or(q, &toks, &mut pos)?;
    if pos != toks.len() {
        return Err(bad(q, "unbalanced parentheses or a dangling operator"));
    }
    Ok(e)
}

fn parse_or(q: &str, t: &[Tok], pos: &mut usize) -> Result<Query> {
    let mut left = parse_and(q, t, pos)?;
    while t.get(*pos) == Some(&Tok::Or) {
        *pos += 1;
        let right = parse_and(q, t, pos)?;
        left = Query::Or(Box::new(left), Box::new(right));
    }
    Ok(left)
}

fn parse_and(q: &str, t: &[Tok], pos: &mut usize) -> Result<Query> {
    let mut left = parse_not(q, t, pos)?;
    loop {
        match t.get(*pos) {
            Some(Tok::And) => *pos += 1,
            Some(Tok::Term(..) | Tok::Open | Tok::Not) => {}
            _ => return Ok(left),
        }
        let right = parse_not(q, t, pos)?;
        left = Query::And(Box::new(left), Box::new(right));
    }
}

fn parse_not(q: &str, t: &[Tok], pos: &mut usize) -> Result<Query> {
    match t.get(*pos) {
        Some(Tok::Not) => {
            *pos += 1;
            Ok(Query::Not(Box::new(parse_not(q, t, pos)?)))
        }
        Some(Tok::Open) => {
            *pos += 1;
            let e = parse_or(q, t, pos)?;
            if t.get(*pos) != Some(&Tok::Close) {
                return Err(bad(q, "a parenthesis is not closed"));
            }
            *pos += 1;
            Ok(e)
        }
        Some(Tok::Term(f, v)) => {
            *pos += 1;
            Ok(Query::Term {
                field: f.clone(),
                pattern: v.clone(),
            })
        }
        _ => Err(bad(q, "a term is missing")),
    }
}

impl Query {
    pub(crate) fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Query::And(a, b) => a.matches(s) && b.matches(s),
            Query::Or(a, b) => a.matches(s) || b.matches(s),
            Query::Not(a) => !a.matches(s),
            Query::Term { field, pattern } => match field.as_str() {
                "thingName" => glob(pattern, s.name),
                "thingTypeName" => s.thing_type.is_some_and(|t| glob(pattern, t)),
                "thingGroupNames" => s.groups.iter().any(|g| glob(pattern, g)),
                f => f
                    .strip_prefix("attributes.")
                    .and_then(|a| s.attributes.get(a))
                    .is_some_and(|v| glob(pattern, v)),
            },
        }
    }
}

/// `*` matches any run of characters, `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject<'a>(
        name: &'a str,
        attrs: &'a BTreeMap<String, String>,
        groups: &'a [String],
    ) -> Subject<'a> {
        Subject {
            name,
            thing_type: Some("sensor"),
            attributes: attrs,
            groups,
        }
    }

    #[test]
    fn terms_combine_with_and_or_not_and_parentheses() {
        let attrs: BTreeMap<String, String> = [
            ("color".to_string(), "red".to_string()),
            ("fw".into(), "1.2.3".into()),
        ]
        .into();
        let groups = vec!["plant".to_string()];
        let s = subject("sensor-7", &attrs, &groups);
        for (q, want) in [
            ("attributes.color:red", true),
            ("attributes.color:blue", false),
            ("thingName:sensor-*", true),
            ("thingName:sensor-? AND attributes.fw:1.*", true),
            ("attributes.color:blue OR thingTypeName:sensor", true),
            ("NOT attributes.color:red", false),
            (
                "(attributes.color:blue OR attributes.color:red) thingGroupNames:plant",
                true,
            ),
            ("attributes.missing:*", false),
            ("attributes.fw:\"1.2.3\"", true),
        ] {
            assert_eq!(parse(q).unwrap().matches(&s), want, "{q}");
        }
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        for q in [
            "",
            "color:red",
            "attributes.x:",
            "(thingName:a",
            "thingName:a OR",
            "a AND b",
        ] {
            assert!(matches!(parse(q), Err(RegistryError::Invalid(_))), "{q}");
        }
    }
}
