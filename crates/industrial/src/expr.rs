//! A small, safe expression language for transforms and metrics: numbers, variables, `+ - * / %
//! ^`, comparisons (`== != < <= > >=`, true = 1), `and or not`, `if(cond, a, b)`, math
//! functions, unit conversion (`convert(x, "degF", "degC")`) and, over a metric's window, the
//! aggregates `avg sum count min max` of a variable. Parsed once; evaluation never panics,
//! loops or allocates beyond the tree, and every error names what is wrong.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(f64),
    Str(String),
    Var(String),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    #[error("expression {expr:?}, at character {at}: {what}")]
    Parse {
        expr: String,
        at: usize,
        what: String,
    },
    #[error("{0}")]
    Eval(String),
}

/// What variables stand for while an expression is evaluated.
pub trait Env {
    /// The variable's current value.
    fn scalar(&self, name: &str) -> Option<f64>;
    /// The variable's values in the current window (metrics only).
    fn series(&self, name: &str) -> Option<&[f64]>;
}

const AGGREGATES: [&str; 5] = ["avg", "sum", "count", "min", "max"];

/// Functions and their argument counts (min, max).
fn arity(name: &str) -> Option<(usize, usize)> {
    Some(match name {
        "avg" | "sum" | "min" | "max" | "count" => (1, usize::MAX),
        "if" => (3, 3),
        "abs" | "sqrt" | "exp" | "log" | "ln" | "log10" | "floor" | "ceil" | "round" | "sin"
        | "cos" | "tan" => (1, 1),
        "pow" | "gt" | "gte" | "lt" | "lte" | "eq" | "neq" => (2, 2),
        "convert" => (3, 3),
        _ => return None,
    })
}

impl Expr {
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        let mut p = Parser {
            src: text,
            toks: lex(text)?,
            pos: 0,
        };
        let e = p.or()?;
        if p.pos < p.toks.len() {
            return Err(p.err("unexpected text after the expression"));
        }
        Ok(e)
    }

    /// Every variable the expression names.
    pub fn variables(&self, out: &mut Vec<String>) {
        match self {
            Expr::Var(v) if !out.contains(v) => out.push(v.clone()),
            Expr::Neg(e) | Expr::Not(e) => e.variables(out),
            Expr::Bin(_, a, b) => {
                a.variables(out);
                b.variables(out);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.variables(out)),
            _ => {}
        }
    }

    pub fn eval(&self, env: &dyn Env) -> Result<f64, ExprError> {
        let bad = |m: String| Err(ExprError::Eval(m));
        Ok(match self {
            Expr::Num(n) => *n,
            Expr::Str(s) => return bad(format!("string {s:?} used as a number")),
            Expr::Var(v) => match env.scalar(v) {
                Some(x) => x,
                None => return bad(format!("variable {v} has no value yet")),
            },
            Expr::Neg(e) => -e.eval(env)?,
            Expr::Not(e) => truth(e.eval(env)? == 0.0),
            Expr::Bin(op, a, b) => {
                let x = a.eval(env)?;
                // and/or short-circuit.
                match op {
                    Op::And if x == 0.0 => return Ok(0.0),
                    Op::Or if x != 0.0 => return Ok(1.0),
                    _ => {}
                }
                let y = b.eval(env)?;
                match op {
                    Op::Add => x + y,
                    Op::Sub => x - y,
                    Op::Mul => x * y,
                    Op::Div if y == 0.0 => return bad("division by zero".into()),
                    Op::Div => x / y,
                    Op::Rem if y == 0.0 => return bad("remainder by zero".into()),
                    Op::Rem => x % y,
                    Op::Pow => x.powf(y),
                    Op::Eq => truth(x == y),
                    Op::Ne => truth(x != y),
                    Op::Lt => truth(x < y),
                    Op::Le => truth(x <= y),
                    Op::Gt => truth(x > y),
                    Op::Ge => truth(x >= y),
                    Op::And | Op::Or => truth(y != 0.0),
                }
            }
            Expr::Call(f, args) => return call(f, args, env),
        })
    }
}

fn truth(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn call(f: &str, args: &[Expr], env: &dyn Env) -> Result<f64, ExprError> {
    // An aggregate over one variable that has a window: the window's values.
    if AGGREGATES.contains(&f)
        && let [Expr::Var(v)] = args
        && let Some(series) = env.series(v)
    {
        if series.is_empty() && f != "count" && f != "sum" {
            return Err(ExprError::Eval(format!(
                "{f}({v}): no values in the window"
            )));
        }
        return Ok(aggregate(f, series.iter().copied()));
    }
    if f == "if" {
        return if args[0].eval(env)? != 0.0 {
            args[1].eval(env)
        } else {
            args[2].eval(env)
        };
    }
    if f == "convert" {
        let unit = |e: &Expr| match e {
            Expr::Str(s) => Ok(s.clone()),
            _ => Err(ExprError::Eval(
                "convert(value, \"from\", \"to\"): units must be quoted strings".into(),
            )),
        };
        let x = args[0].eval(env)?;
        return crate::units::convert(x, &unit(&args[1])?, &unit(&args[2])?)
            .map_err(ExprError::Eval);
    }
    let v = args
        .iter()
        .map(|a| a.eval(env))
        .collect::<Result<Vec<f64>, _>>()?;
    Ok(match f {
        "avg" | "sum" | "count" | "min" | "max" => aggregate(f, v.iter().copied()),
        "abs" => v[0].abs(),
        "sqrt" => v[0].sqrt(),
        "exp" => v[0].exp(),
        "log" | "ln" => v[0].ln(),
        "log10" => v[0].log10(),
        "floor" => v[0].floor(),
        "ceil" => v[0].ceil(),
        "round" => v[0].round(),
        "sin" => v[0].sin(),
        "cos" => v[0].cos(),
        "tan" => v[0].tan(),
        "pow" => v[0].powf(v[1]),
        "gt" => truth(v[0] > v[1]),
        "gte" => truth(v[0] >= v[1]),
        "lt" => truth(v[0] < v[1]),
        "lte" => truth(v[0] <= v[1]),
        "eq" => truth(v[0] == v[1]),
        "neq" => truth(v[0] != v[1]),
        _ => return Err(ExprError::Eval(format!("unknown function {f}"))),
    })
}

fn aggregate(f: &str, values: impl Iterator<Item = f64>) -> f64 {
    let (mut n, mut sum, mut lo, mut hi) = (0usize, 0.0, f64::INFINITY, f64::NEG_INFINITY);
    for x in values {
        n += 1;
        sum += x;
        lo = lo.min(x);
        hi = hi.max(x);
    }
    match f {
        "avg" => sum / n as f64,
        "sum" => sum,
        "count" => n as f64,
        "min" => lo,
        _ => hi,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Sym(&'static str),
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let err = |at: usize, what: &str| ExprError::Parse {
        expr: src.to_string(),
        at,
        what: what.to_string(),
    };
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    const SYMS: [&str; 19] = [
        "==", "!=", "<=", ">=", "&&", "||", "+", "-", "*", "/", "%", "^", "<", ">", "(", ")", ",",
        "!", "=",
    ];
    while i < b.len() {
        let c = b[i] as char;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                let mut j = i + 1;
                if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                    j += 1;
                }
                if j < b.len() && b[j].is_ascii_digit() {
                    i = j;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let n = src[start..i]
                .parse::<f64>()
                .map_err(|_| err(start, "malformed number"))?;
            out.push((Tok::Num(n), start));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((Tok::Ident(src[start..i].to_string()), start));
        } else if c == '"' || c == '\'' {
            let start = i;
            let end = src[i + 1..]
                .find(c)
                .ok_or_else(|| err(start, "unterminated string"))?;
            out.push((Tok::Str(src[i + 1..i + 1 + end].to_string()), start));
            i += end + 2;
        } else {
            let sym = SYMS
                .iter()
                .find(|s| src[i..].starts_with(**s))
                .ok_or_else(|| err(i, &format!("unexpected character {c:?}")))?;
            if *sym == "=" {
                return Err(err(i, "use == to compare"));
            }
            out.push((Tok::Sym(sym), i));
            i += sym.len();
        }
    }
    Ok(out)
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> ExprError {
        ExprError::Parse {
            expr: self.src.to_string(),
            at: self
                .toks
                .get(self.pos)
                .map(|t| t.1)
                .unwrap_or(self.src.len()),
            what: what.to_string(),
        }
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    fn eat_sym(&mut self, syms: &[&'static str]) -> Option<&'static str> {
        match self.peek() {
            Some(Tok::Sym(s)) if syms.contains(s) => {
                let s = *s;
                self.pos += 1;
                Some(s)
            }
            _ => None,
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(w)) if w == word) {
            self.pos += 1;
            return true;
        }
        false
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.and()?;
        while self.eat_sym(&["||"]).is_some() || self.eat_word("or") {
            e = Expr::Bin(Op::Or, Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.not()?;
        while self.eat_sym(&["&&"]).is_some() || self.eat_word("and") {
            e = Expr::Bin(Op::And, Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }

    fn not(&mut self) -> Result<Expr, ExprError> {
        if self.eat_sym(&["!"]).is_some() || self.eat_word("not") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Expr, ExprError> {
        let a = self.add()?;
        let op = match self.eat_sym(&["==", "!=", "<=", ">=", "<", ">"]) {
            Some("==") => Op::Eq,
            Some("!=") => Op::Ne,
            Some("<=") => Op::Le,
            Some(">=") => Op::Ge,
            Some("<") => Op::Lt,
            Some(">") => Op::Gt,
            _ => return Ok(a),
        };
        Ok(Expr::Bin(op, Box::new(a), Box::new(self.add()?)))
    }

    fn add(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.mul()?;
        while let Some(s) = self.eat_sym(&["+", "-"]) {
            let op = if s == "+" { Op::Add } else { Op::Sub };
            e = Expr::Bin(op, Box::new(e), Box::new(self.mul()?));
        }
        Ok(e)
    }

    fn mul(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.unary()?;
        while let Some(s) = self.eat_sym(&["*", "/", "%"]) {
            let op = match s {
                "*" => Op::Mul,
                "/" => Op::Div,
                _ => Op::Rem,
            };
            e = Expr::Bin(op, Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.eat_sym(&["-"]).is_some() {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        if self.eat_sym(&["+"]).is_some() {
            return self.unary();
        }
        let base = self.primary()?;
        if self.eat_sym(&["^"]).is_some() {
            // Right-associative, binds tighter than unary minus on its left: -2^2 = -4.
            return Ok(Expr::Bin(Op::Pow, Box::new(base), Box::new(self.unary()?)));
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let Some((tok, _)) = self.toks.get(self.pos).cloned() else {
            return Err(self.err("the expression ends too early"));
        };
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Expr::Num(n)),
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::Sym("(") => {
                let e = self.or()?;
                self.eat_sym(&[")"]).ok_or_else(|| self.err("expected )"))?;
                Ok(e)
            }
            Tok::Ident(name) if self.eat_sym(&["("]).is_some() => {
                let (lo, hi) = arity(&name).ok_or_else(|| {
                    self.pos -= 2;
                    self.err(&format!("unknown function {name}"))
                })?;
                let mut args = Vec::new();
                if self.eat_sym(&[")"]).is_none() {
                    loop {
                        args.push(self.or()?);
                        if self.eat_sym(&[")"]).is_some() {
                            break;
                        }
                        self.eat_sym(&[","])
                            .ok_or_else(|| self.err("expected , or )"))?;
                    }
                }
                if args.len() < lo || args.len() > hi {
                    return Err(self.err(&format!(
                        "{name} takes {}{} arguments, not {}",
                        lo,
                        if hi == usize::MAX {
                            " or more".to_string()
                        } else if hi != lo {
                            format!("-{hi}")
                        } else {
                            String::new()
                        },
                        args.len()
                    )));
                }
                Ok(Expr::Call(name, args))
            }
            Tok::Ident(name) if ["and", "or", "not"].contains(&name.as_str()) => {
                self.pos -= 1;
                Err(self.err(&format!("{name} needs an operand")))
            }
            Tok::Ident(name) => Ok(Expr::Var(name)),
            Tok::Sym(_) => {
                self.pos -= 1;
                Err(self.err("expected a number, a variable, a function or ("))
            }
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Vars(HashMap<&'static str, f64>, HashMap<&'static str, Vec<f64>>);
    impl Env for Vars {
        fn scalar(&self, n: &str) -> Option<f64> {
            self.0.get(n).copied()
        }
        fn series(&self, n: &str) -> Option<&[f64]> {
            self.1.get(n).map(|v| v.as_slice())
        }
    }

    fn eval(text: &str) -> Result<f64, ExprError> {
        let vars = Vars(
            HashMap::from([("x", 4.0), ("t", 212.0)]),
            HashMap::from([("w", vec![1.0, 2.0, 6.0]), ("none", vec![])]),
        );
        Expr::parse(text)?.eval(&vars)
    }

    #[test]
    fn arithmetic_precedence_and_power() {
        assert_eq!(eval("1 + 2 * 3").unwrap(), 7.0);
        assert_eq!(eval("(1 + 2) * 3").unwrap(), 9.0);
        assert_eq!(eval("-2^2").unwrap(), -4.0);
        assert_eq!(eval("2^3^2").unwrap(), 512.0);
        assert_eq!(eval("10 % 4 - x / 2").unwrap(), 0.0);
        assert_eq!(eval("1.5e2 + .5").unwrap(), 150.5);
    }

    #[test]
    fn comparisons_logic_and_conditions() {
        assert_eq!(eval("x > 3 and x <= 4").unwrap(), 1.0);
        assert_eq!(eval("x == 3 || not (x != 4)").unwrap(), 1.0);
        assert_eq!(eval("if(x >= 5, 100, -100)").unwrap(), -100.0);
        assert_eq!(eval("if(gt(x, 1), 1, 1 / 0)").unwrap(), 1.0);
        assert_eq!(eval("0 and 1 / 0").unwrap(), 0.0);
    }

    #[test]
    fn functions_units_and_windows() {
        assert_eq!(eval("avg(w)").unwrap(), 3.0);
        assert_eq!(
            eval("sum(w) + count(w) + min(w) + max(w)").unwrap(),
            9.0 + 3.0 + 1.0 + 6.0
        );
        assert_eq!(eval("max(x, 7, 2)").unwrap(), 7.0);
        assert_eq!(eval("count(none)").unwrap(), 0.0);
        assert!(
            eval("avg(none)")
                .unwrap_err()
                .to_string()
                .contains("no values")
        );
        assert_eq!(eval("convert(t, \"degF\", \"degC\")").unwrap(), 100.0);
        assert_eq!(eval("round(sqrt(x) * 10) / 10").unwrap(), 2.0);
    }

    #[test]
    fn errors_name_the_place_and_the_problem() {
        let e = Expr::parse("x + * 2").unwrap_err().to_string();
        assert!(e.contains("character 4"), "{e}");
        assert!(
            Expr::parse("nope(1)")
                .unwrap_err()
                .to_string()
                .contains("unknown function nope")
        );
        assert!(
            Expr::parse("if(1, 2)")
                .unwrap_err()
                .to_string()
                .contains("takes 3")
        );
        assert!(Expr::parse("x = 2").unwrap_err().to_string().contains("=="));
        assert!(
            Expr::parse("(x")
                .unwrap_err()
                .to_string()
                .contains("expected )")
        );
        assert!(
            eval("y + 1")
                .unwrap_err()
                .to_string()
                .contains("variable y")
        );
        assert!(
            eval("x / 0")
                .unwrap_err()
                .to_string()
                .contains("division by zero")
        );
        assert!(eval("convert(x, \"m\", \"degC\")").is_err());
        let mut vars = vec![];
        Expr::parse("avg(a) + b * a").unwrap().variables(&mut vars);
        assert_eq!(vars, ["a", "b"]);
    }
}
