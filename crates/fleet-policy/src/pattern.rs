//! Patterns with `*`, `?` and policy variables, matched without building strings.

use crate::Context;

/// A policy variable in a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Variable {
    ClientId,
    ThingName,
    ThingTypeName,
    IsAttached,
    Attribute(String),
    /// A variable this crate does not resolve: it never has a value.
    Unknown(String),
}

impl Variable {
    fn from_name(name: &str) -> Variable {
        const ATTRIBUTE: &str = "iot:Connection.Thing.Attributes[";
        match name {
            "iot:ClientId" => Variable::ClientId,
            "iot:Connection.Thing.ThingName" => Variable::ThingName,
            "iot:Connection.Thing.ThingTypeName" => Variable::ThingTypeName,
            "iot:Connection.Thing.IsAttached" => Variable::IsAttached,
            _ => match name
                .strip_prefix(ATTRIBUTE)
                .and_then(|r| r.strip_suffix(']'))
            {
                Some(attr) if !attr.is_empty() => Variable::Attribute(attr.to_owned()),
                _ => Variable::Unknown(name.to_owned()),
            },
        }
    }

    fn resolve<'c>(&self, ctx: &Context<'c>) -> Option<&'c str> {
        match self {
            Variable::ClientId => ctx.client_id,
            Variable::ThingName => ctx.thing.map(|t| t.name),
            Variable::ThingTypeName => ctx.thing.and_then(|t| t.type_name),
            Variable::IsAttached => Some(if ctx.thing.is_some() { "true" } else { "false" }),
            Variable::Attribute(a) => ctx
                .thing
                .and_then(|t| t.attributes.get(a.as_str()).map(String::as_str)),
            Variable::Unknown(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Piece {
    /// Literal text (`${*}`, `${?}`, `${$}` are folded in here).
    Lit(String),
    Var(Variable),
    Star,
    One,
}

#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    pieces: Vec<Piece>,
}

/// One step of a pattern at a position.
enum Unit {
    End,
    Star,
    One,
    Char(char),
}

/// A position in a pattern: the piece and the byte offset in its text.
type Pos = (usize, usize);

impl Pattern {
    /// Parses `s`; with `variables`, `${...}` are policy variables.
    pub(crate) fn parse(s: &str, variables: bool) -> Result<Pattern, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(c) = rest.chars().next() {
            if variables && rest.starts_with("${") {
                let Some(end) = rest.find('}') else {
                    return Err(format!("{s:?}: \"${{\" without its closing \"}}\""));
                };
                let name = &rest[2..end];
                rest = &rest[end + 1..];
                match name {
                    "*" | "?" | "$" => lit.push_str(name),
                    "" => return Err(format!("{s:?}: empty policy variable \"${{}}\"")),
                    _ => {
                        if !lit.is_empty() {
                            pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                        }
                        pieces.push(Piece::Var(Variable::from_name(name)));
                    }
                }
                continue;
            }
            rest = &rest[c.len_utf8()..];
            match c {
                '*' | '?' => {
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    // Consecutive stars are one star.
                    if c == '?' {
                        pieces.push(Piece::One);
                    } else if !matches!(pieces.last(), Some(Piece::Star)) {
                        pieces.push(Piece::Star);
                    }
                }
                _ => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Pattern { pieces })
    }

    pub(crate) fn has_wildcard(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Star | Piece::One))
    }

    /// Whether `subject` matches; `None` when a variable has no value in `ctx`.
    /// `fold_case` compares ASCII letters without regard to case.
    pub(crate) fn matches(
        &self,
        subject: &str,
        ctx: &Context<'_>,
        fold_case: bool,
    ) -> Option<bool> {
        for p in &self.pieces {
            if let Piece::Var(v) = p {
                v.resolve(ctx)?;
            }
        }
        let eq = |a: char, b: char| {
            if fold_case {
                a.eq_ignore_ascii_case(&b)
            } else {
                a == b
            }
        };
        let mut p: Pos = (0, 0);
        let mut s = 0usize;
        // The position after the last star seen and the subject offset it is tried at.
        let mut star: Option<(Pos, usize)> = None;
        loop {
            let (unit, next) = self.unit_at(p, ctx);
            let advanced = match unit {
                Unit::End if s == subject.len() => return Some(true),
                Unit::End => false,
                Unit::Star => {
                    star = Some((next, s));
                    p = next;
                    continue;
                }
                Unit::One => match subject[s..].chars().next() {
                    Some(c) => {
                        s += c.len_utf8();
                        true
                    }
                    None => false,
                },
                Unit::Char(want) => match subject[s..].chars().next() {
                    Some(c) if eq(want, c) => {
                        s += c.len_utf8();
                        true
                    }
                    _ => false,
                },
            };
            if advanced {
                p = next;
                continue;
            }
            // Mismatch: let the last star take one more character, or fail.
            let Some((sp, ss)) = star else {
                return Some(false);
            };
            let c = subject[ss..].chars().next();
            let Some(c) = c else {
                return Some(false);
            };
            let ss = ss + c.len_utf8();
            star = Some((sp, ss));
            p = sp;
            s = ss;
        }
    }

    /// The unit at `p` and the position after it.
    fn unit_at(&self, mut p: Pos, ctx: &Context<'_>) -> (Unit, Pos) {
        loop {
            let text = match self.pieces.get(p.0) {
                None => return (Unit::End, p),
                Some(Piece::Star) => return (Unit::Star, (p.0 + 1, 0)),
                Some(Piece::One) => return (Unit::One, (p.0 + 1, 0)),
                Some(Piece::Lit(s)) => s.as_str(),
                // Checked to resolve before matching starts.
                Some(Piece::Var(v)) => v.resolve(ctx).unwrap_or(""),
            };
            match text[p.1..].chars().next() {
                Some(c) => return (Unit::Char(c), (p.0, p.1 + c.len_utf8())),
                None => p = (p.0 + 1, 0),
            }
        }
    }
}
