//! Local processing: asset models in SiteWise's shape (`assetModelProperties` of type
//! `measurement`, `attribute`, `transform {expression, variables}` and `metric {expression,
//! variables, window {tumbling {interval, offset}}}`), assets that map model properties to
//! aliases, and the evaluation of transforms and metrics over the samples that flow past.
//!
//! As in SiteWise, only GOOD-quality numbers feed transforms and metrics; a transform is
//! recomputed whenever one of its inputs changes (with the latest value of the others); a
//! metric is computed once per tumbling window, stamped with the window's start.

use crate::expr::{Env, Expr};
use crate::modbus::decode::as_f64;
use crate::sample::{Quality, Sample, Value};
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessingConfig {
    #[serde(default)]
    pub asset_models: Vec<AssetModel>,
    #[serde(default)]
    pub assets: Vec<Asset>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssetModel {
    #[serde(alias = "assetModelName")]
    pub name: String,
    #[serde(default)]
    pub asset_model_description: Option<String>,
    #[serde(default)]
    pub asset_model_properties: Vec<ModelProperty>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelProperty {
    pub name: String,
    /// DOUBLE (default), INTEGER, BOOLEAN or STRING: the type computed values are written as.
    #[serde(default)]
    pub data_type: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(rename = "type")]
    pub kind: PropertyType,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PropertyType {
    #[serde(default)]
    pub measurement: Option<serde_json::Value>,
    #[serde(default)]
    pub attribute: Option<Attribute>,
    #[serde(default)]
    pub transform: Option<Formula>,
    #[serde(default)]
    pub metric: Option<Metric>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Attribute {
    #[serde(default)]
    pub default_value: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Formula {
    pub expression: String,
    pub variables: Vec<Variable>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metric {
    pub expression: String,
    pub variables: Vec<Variable>,
    pub window: Window,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Variable {
    pub name: String,
    pub value: VariableValue,
}

/// As in SiteWise, `propertyId` may name a property of the same model.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariableValue {
    #[serde(alias = "propertyName")]
    pub property_id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Window {
    pub tumbling: Tumbling,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tumbling {
    /// `10s`, `1m`, `5m`, `1h`, `1d`… (SiteWise allows 1m to 1w; locally seconds work too).
    pub interval: String,
    #[serde(default)]
    pub offset: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Asset {
    #[serde(alias = "assetName")]
    pub name: String,
    pub asset_model_name: String,
    #[serde(default)]
    pub properties: Vec<AssetProperty>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssetProperty {
    #[serde(alias = "propertyName")]
    pub name: String,
    /// The stream alias: measurements read it, transforms and metrics are written with it.
    #[serde(default, alias = "propertyAlias")]
    pub alias: Option<String>,
    /// An attribute's value for this asset (overrides the model's default).
    #[serde(default)]
    pub value: Option<String>,
}

/// Parses `500ms`, `10s`, `1m`, `2h`, `1d`, `1w` into nanoseconds.
pub fn parse_interval(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not an interval like 10s, 1m, 1h, 1d"))?;
    let ms: i64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        _ => return Err(format!("{text:?}: unit must be ms, s, m, h, d or w")),
    };
    if n <= 0 {
        return Err(format!("{text:?} must be positive"));
    }
    Ok(n * ms * 1_000_000)
}

enum Kind {
    Measurement,
    Attribute,
    Transform {
        expr: Expr,
        vars: Vec<(String, usize)>,
    },
    Metric(Box<MetricState>),
}

struct MetricState {
    expr: Expr,
    vars: Vec<(String, usize)>,
    interval: i64,
    offset: i64,
    /// Start of the open window, if it has values.
    start: Option<i64>,
    series: HashMap<String, Vec<f64>>,
}

struct Node {
    /// `asset/property`, for logs.
    label: String,
    kind: Kind,
    alias: Option<String>,
    data_type: String,
    value: Option<f64>,
    /// Transforms that read this node, and metrics with the variable names that read it.
    transforms: Vec<usize>,
    metrics: Vec<(usize, String)>,
    /// Position in evaluation order (transforms after their inputs).
    rank: usize,
}

/// The compiled asset models and their state.
pub struct Processor {
    nodes: Vec<Node>,
    by_alias: HashMap<String, Vec<usize>>,
    /// How long after a window ends it waits for stragglers before it is computed.
    grace_ns: i64,
    late: u64,
}

type Fail = (String, String);

impl ProcessingConfig {
    /// Checks the models and assets (the error is field path, reason).
    pub fn compile(&self) -> Result<Processor, Fail> {
        Processor::new(self)
    }
}

impl Processor {
    pub fn new(cfg: &ProcessingConfig) -> Result<Processor, Fail> {
        let mut nodes: Vec<Node> = Vec::new();
        let mut by_alias: HashMap<String, Vec<usize>> = HashMap::new();
        let models: HashMap<&str, (usize, &AssetModel)> = cfg
            .asset_models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), (i, m)))
            .collect();
        for (mi, m) in cfg.asset_models.iter().enumerate() {
            for (pi, p) in m.asset_model_properties.iter().enumerate() {
                let f = format!("assetModels[{mi}].assetModelProperties[{pi}]");
                let k = &p.kind;
                let kinds = [
                    k.measurement.is_some(),
                    k.attribute.is_some(),
                    k.transform.is_some(),
                    k.metric.is_some(),
                ];
                if kinds.iter().filter(|b| **b).count() != 1 {
                    return Err((
                        format!("{f}.type"),
                        "must be exactly one of measurement, attribute, transform, metric".into(),
                    ));
                }
                if let Some(dt) = &p.data_type
                    && !["DOUBLE", "INTEGER", "BOOLEAN", "STRING"].contains(&dt.as_str())
                {
                    return Err((
                        format!("{f}.dataType"),
                        "must be DOUBLE, INTEGER, BOOLEAN or STRING".into(),
                    ));
                }
                if let Some(u) = &p.unit
                    && k.transform.is_none()
                    && k.metric.is_none()
                {
                    // Units are labels in SiteWise; only `convert` needs them known.
                    let _ = u;
                }
            }
        }
        for (ai, a) in cfg.assets.iter().enumerate() {
            let f = format!("assets[{ai}]");
            let Some(&(mi, model)) = models.get(a.asset_model_name.as_str()) else {
                return Err((
                    format!("{f}.assetModelName"),
                    format!("no asset model is named {:?}", a.asset_model_name),
                ));
            };
            for (i, ap) in a.properties.iter().enumerate() {
                if !model
                    .asset_model_properties
                    .iter()
                    .any(|p| p.name == ap.name)
                {
                    return Err((
                        format!("{f}.properties[{i}].name"),
                        format!("model {:?} has no property {:?}", model.name, ap.name),
                    ));
                }
            }
            let base = nodes.len();
            let index: HashMap<&str, usize> = model
                .asset_model_properties
                .iter()
                .enumerate()
                .map(|(i, p)| (p.name.as_str(), base + i))
                .collect();
            for (pi, p) in model.asset_model_properties.iter().enumerate() {
                let mf = format!("assetModels[{mi}].assetModelProperties[{pi}]");
                let ap = a.properties.iter().find(|ap| ap.name == p.name);
                let alias = ap.and_then(|ap| ap.alias.clone());
                let resolve =
                    |vars: &[Variable], what: &str| -> Result<Vec<(String, usize)>, Fail> {
                        vars.iter()
                            .enumerate()
                            .map(|(vi, v)| {
                                index
                                    .get(v.value.property_id.as_str())
                                    .map(|n| (v.name.clone(), *n))
                                    .ok_or_else(|| {
                                        (
                                            format!(
                                                "{mf}.type.{what}.variables[{vi}].value.propertyId"
                                            ),
                                            format!(
                                                "model {:?} has no property {:?}",
                                                model.name, v.value.property_id
                                            ),
                                        )
                                    })
                            })
                            .collect()
                    };
                let check_expr =
                    |text: &str, vars: &[(String, usize)], what: &str| -> Result<Expr, Fail> {
                        let e = Expr::parse(text)
                            .map_err(|e| (format!("{mf}.type.{what}.expression"), e.to_string()))?;
                        let mut used = vec![];
                        e.variables(&mut used);
                        if let Some(u) = used.iter().find(|u| !vars.iter().any(|(n, _)| n == *u)) {
                            return Err((
                                format!("{mf}.type.{what}.expression"),
                                format!("uses {u}, which is not among its variables"),
                            ));
                        }
                        Ok(e)
                    };
                let mut value = None;
                let kind = if let Some(t) = &p.kind.transform {
                    let vars = resolve(&t.variables, "transform")?;
                    Kind::Transform {
                        expr: check_expr(&t.expression, &vars, "transform")?,
                        vars,
                    }
                } else if let Some(m) = &p.kind.metric {
                    let vars = resolve(&m.variables, "metric")?;
                    let w = &m.window.tumbling;
                    let interval = parse_interval(&w.interval)
                        .map_err(|r| (format!("{mf}.type.metric.window.tumbling.interval"), r))?;
                    let offset = match &w.offset {
                        Some(o) => parse_interval(o)
                            .map_err(|r| (format!("{mf}.type.metric.window.tumbling.offset"), r))?,
                        None => 0,
                    };
                    Kind::Metric(Box::new(MetricState {
                        expr: check_expr(&m.expression, &vars, "metric")?,
                        vars,
                        interval,
                        offset: offset % interval,
                        start: None,
                        series: HashMap::new(),
                    }))
                } else if let Some(at) = &p.kind.attribute {
                    let text = ap
                        .and_then(|ap| ap.value.clone())
                        .or(at.default_value.clone());
                    value = text.as_deref().and_then(|t| t.trim().parse::<f64>().ok());
                    Kind::Attribute
                } else {
                    Kind::Measurement
                };
                if let (Kind::Measurement, Some(al)) = (&kind, &alias) {
                    by_alias.entry(al.clone()).or_default().push(nodes.len());
                }
                nodes.push(Node {
                    label: format!("{}/{}", a.name, p.name),
                    kind,
                    alias,
                    data_type: p.data_type.clone().unwrap_or_else(|| "DOUBLE".into()),
                    value,
                    transforms: vec![],
                    metrics: vec![],
                    rank: 0,
                });
            }
        }
        // Wire dependents, refuse metrics of metrics, rank transforms (and find cycles).
        for i in 0..nodes.len() {
            let (vars, is_metric) = match &nodes[i].kind {
                Kind::Transform { vars, .. } => (vars.clone(), false),
                Kind::Metric(m) => (m.vars.clone(), true),
                _ => continue,
            };
            for (name, src) in vars {
                if matches!(nodes[src].kind, Kind::Metric(_)) {
                    return Err((
                        format!("asset property {}", nodes[i].label),
                        format!(
                            "variable {name} reads metric {}; metrics of metrics are not supported",
                            nodes[src].label
                        ),
                    ));
                }
                if is_metric {
                    nodes[src].metrics.push((i, name));
                } else if !nodes[src].transforms.contains(&i) {
                    nodes[src].transforms.push(i);
                }
            }
        }
        let n = nodes.len();
        let mut state = vec![0u8; n];
        let mut order = Vec::with_capacity(n);
        fn visit(
            i: usize,
            nodes: &[Node],
            state: &mut [u8],
            order: &mut Vec<usize>,
        ) -> Result<(), String> {
            match state[i] {
                2 => return Ok(()),
                1 => return Err(nodes[i].label.clone()),
                _ => {}
            }
            state[i] = 1;
            if let Kind::Transform { vars, .. } = &nodes[i].kind {
                for (_, src) in vars {
                    visit(*src, nodes, state, order)?;
                }
            }
            state[i] = 2;
            order.push(i);
            Ok(())
        }
        for i in 0..n {
            visit(i, &nodes, &mut state, &mut order).map_err(|label| {
                (
                    format!("asset property {label}"),
                    "its transform depends on itself".to_string(),
                )
            })?;
        }
        for (rank, i) in order.into_iter().enumerate() {
            nodes[i].rank = rank;
        }
        Ok(Processor {
            nodes,
            by_alias,
            grace_ns: 500_000_000,
            late: 0,
        })
    }

    /// Whether any asset reads `alias` or anything is computed at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Samples that arrived after their metric window was computed (dropped).
    pub fn late_samples(&self) -> u64 {
        self.late
    }

    /// Takes one sample; computed samples are pushed to `out`.
    pub fn on_sample(&mut self, s: &Sample, out: &mut Vec<Sample>) {
        let Some(targets) = self.by_alias.get(&s.alias) else {
            return;
        };
        if s.quality != Quality::Good {
            return;
        }
        let Some(x) = s.value.as_ref().and_then(as_f64) else {
            return;
        };
        let mut dirty: Vec<usize> = vec![];
        for &t in targets.clone().iter() {
            self.nodes[t].value = Some(x);
            self.feed(t, x, s.timestamp_ns, out, &mut dirty);
        }
        // Transforms in rank order, each once, with the latest values of their inputs.
        while !dirty.is_empty() {
            dirty.sort_by_key(|i| std::cmp::Reverse(self.nodes[*i].rank));
            dirty.dedup();
            let i = dirty.pop().expect("not empty");
            let Kind::Transform { expr, vars } = &self.nodes[i].kind else {
                continue;
            };
            let env = Scalars {
                nodes: &self.nodes,
                vars,
            };
            match expr.eval(&env) {
                Ok(v) => {
                    self.nodes[i].value = Some(v);
                    self.emit(i, v, s.timestamp_ns, out);
                    self.feed(i, v, s.timestamp_ns, out, &mut dirty);
                }
                Err(e) => {
                    tracing::debug!(property = self.nodes[i].label, error = %e, "transform not computed")
                }
            }
        }
    }

    /// Queues the transforms that read node `i` and adds `x` to the windows of the metrics that do.
    fn feed(&mut self, i: usize, x: f64, ts: i64, out: &mut Vec<Sample>, dirty: &mut Vec<usize>) {
        dirty.extend(self.nodes[i].transforms.iter().copied());
        for (m, var) in self.nodes[i].metrics.clone() {
            let Kind::Metric(ms) = &mut self.nodes[m].kind else {
                continue;
            };
            let start = window_start(ts, ms.interval, ms.offset);
            match ms.start {
                Some(open) if start < open => {
                    self.late += 1;
                    continue;
                }
                Some(open) if start > open => self.close(m, out),
                _ => {}
            }
            let Kind::Metric(ms) = &mut self.nodes[m].kind else {
                continue;
            };
            ms.start = Some(start);
            ms.series.entry(var).or_default().push(x);
        }
    }

    /// Computes the open window of metric `m` and clears it.
    fn close(&mut self, m: usize, out: &mut Vec<Sample>) {
        let Kind::Metric(ms) = &mut self.nodes[m].kind else {
            return;
        };
        let Some(start) = ms.start.take() else { return };
        let series = std::mem::take(&mut ms.series);
        let env = Windowed {
            series: &series,
            vars: &ms.vars,
        };
        match ms.expr.eval(&env) {
            Ok(v) => {
                self.nodes[m].value = Some(v);
                self.emit(m, v, start, out);
            }
            Err(e) => {
                tracing::debug!(property = self.nodes[m].label, error = %e, "metric not computed")
            }
        }
    }

    /// Computes every window that ended more than the grace period before `now_ns`.
    pub fn tick(&mut self, now_ns: i64, out: &mut Vec<Sample>) {
        for m in 0..self.nodes.len() {
            if let Kind::Metric(ms) = &self.nodes[m].kind
                && let Some(start) = ms.start
                && start + ms.interval + self.grace_ns <= now_ns
            {
                self.close(m, out);
            }
        }
    }

    /// When the next window is due to be computed (epoch ns), if one is open.
    pub fn next_deadline(&self) -> Option<i64> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.kind {
                Kind::Metric(ms) => ms.start.map(|s| s + ms.interval + self.grace_ns),
                _ => None,
            })
            .min()
    }

    fn emit(&self, i: usize, v: f64, ts: i64, out: &mut Vec<Sample>) {
        let node = &self.nodes[i];
        let Some(alias) = &node.alias else { return };
        let (value, quality) = match node.data_type.as_str() {
            _ if !v.is_finite() => (None, Quality::Bad),
            "INTEGER" => (Some(Value::Integer(v.round() as i64)), Quality::Good),
            "BOOLEAN" => (Some(Value::Boolean(v != 0.0)), Quality::Good),
            "STRING" => (Some(Value::String(v.to_string())), Quality::Good),
            _ => (Some(Value::Double(v)), Quality::Good),
        };
        out.push(Sample {
            alias: alias.clone(),
            value,
            quality,
            timestamp_ns: ts,
        });
    }
}

fn window_start(ts: i64, interval: i64, offset: i64) -> i64 {
    (ts - offset).div_euclid(interval) * interval + offset
}

struct Scalars<'a> {
    nodes: &'a [Node],
    vars: &'a [(String, usize)],
}

impl Env for Scalars<'_> {
    fn scalar(&self, name: &str) -> Option<f64> {
        let (_, i) = self.vars.iter().find(|(n, _)| n == name)?;
        self.nodes[*i].value
    }
    fn series(&self, _: &str) -> Option<&[f64]> {
        None
    }
}

struct Windowed<'a> {
    series: &'a HashMap<String, Vec<f64>>,
    vars: &'a [(String, usize)],
}

impl Env for Windowed<'_> {
    fn scalar(&self, name: &str) -> Option<f64> {
        self.series.get(name).and_then(|s| s.last().copied())
    }
    fn series(&self, name: &str) -> Option<&[f64]> {
        if !self.vars.iter().any(|(n, _)| n == name) {
            return None;
        }
        Some(self.series.get(name).map(|v| v.as_slice()).unwrap_or(&[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boiler() -> ProcessingConfig {
        serde_json::from_value(serde_json::json!({
            "assetModels": [{"name": "Boiler", "assetModelProperties": [
                {"name": "TempF", "dataType": "DOUBLE", "unit": "degF", "type": {"measurement": {}}},
                {"name": "Limit", "type": {"attribute": {"defaultValue": "90"}}},
                {"name": "TempC", "type": {"transform": {"expression": "convert(tf, \"degF\", \"degC\")",
                    "variables": [{"name": "tf", "value": {"propertyId": "TempF"}}]}}},
                {"name": "Hot", "dataType": "BOOLEAN", "type": {"transform": {"expression": "if(tc > lim, 1, 0)",
                    "variables": [{"name": "tc", "value": {"propertyId": "TempC"}},
                                  {"name": "lim", "value": {"propertyId": "Limit"}}]}}},
                {"name": "AvgC", "type": {"metric": {"expression": "avg(tc)",
                    "variables": [{"name": "tc", "value": {"propertyId": "TempC"}}],
                    "window": {"tumbling": {"interval": "10s"}}}}},
                {"name": "MaxF", "type": {"metric": {"expression": "max(tf) - min(tf)",
                    "variables": [{"name": "tf", "value": {"propertyId": "TempF"}}],
                    "window": {"tumbling": {"interval": "10s"}}}}}
            ]}],
            "assets": [{"assetName": "B1", "assetModelName": "Boiler", "properties": [
                {"name": "TempF", "alias": "/b1/tf"}, {"name": "TempC", "alias": "/b1/tc"},
                {"name": "Hot", "alias": "/b1/hot"}, {"name": "AvgC", "alias": "/b1/avg"},
                {"name": "MaxF", "alias": "/b1/range"}, {"name": "Limit", "value": "50"}]}]
        }))
        .unwrap()
    }

    fn good(alias: &str, v: f64, ts_s: f64) -> Sample {
        Sample {
            alias: alias.into(),
            value: Some(Value::Double(v)),
            quality: Quality::Good,
            timestamp_ns: (ts_s * 1e9) as i64,
        }
    }

    #[test]
    fn transforms_chain_and_windows_tumble() {
        let mut p = boiler().compile().unwrap();
        let mut out = vec![];
        p.on_sample(&good("/b1/tf", 212.0, 1000.0), &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].alias, "/b1/tc");
        assert!(matches!(out[0].value, Some(Value::Double(v)) if (v - 100.0).abs() < 1e-9));
        assert_eq!(out[1].value, Some(Value::Boolean(true)));
        out.clear();
        p.on_sample(&good("/b1/tf", 32.0, 1005.0), &mut out);
        assert_eq!(out[1].value, Some(Value::Boolean(false)));
        // Bad quality feeds nothing.
        let bad = Sample {
            alias: "/b1/tf".into(),
            value: None,
            quality: Quality::Bad,
            timestamp_ns: 1_006_000_000_000,
        };
        out.clear();
        p.on_sample(&bad, &mut out);
        assert!(out.is_empty());
        // The next window's first sample closes [1000, 1010).
        p.on_sample(&good("/b1/tf", 50.0, 1012.0), &mut out);
        let avg = out.iter().find(|s| s.alias == "/b1/avg").expect("avg");
        assert_eq!(avg.timestamp_ns, 1_000_000_000_000);
        assert!(matches!(avg.value, Some(Value::Double(v)) if (v - 50.0).abs() < 1e-9));
        let range = out.iter().find(|s| s.alias == "/b1/range").expect("range");
        assert_eq!(range.value, Some(Value::Double(180.0)));
        // A late sample for a closed window is dropped and counted.
        out.clear();
        p.on_sample(&good("/b1/tf", 50.0, 1001.0), &mut out);
        assert_eq!(p.late_samples(), 2);
        // The timer closes the open window once it has ended (plus the grace period).
        assert_eq!(p.next_deadline(), Some(1_020_500_000_000));
        out.clear();
        p.tick(1_020_000_000_000, &mut out);
        assert!(out.is_empty());
        p.tick(1_020_600_000_000, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].timestamp_ns, 1_010_000_000_000);
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let mut c = boiler();
        c.assets[0].asset_model_name = "Nope".into();
        assert_eq!(c.compile().err().unwrap().0, "assets[0].assetModelName");
        let mut c = boiler();
        c.asset_models[0].asset_model_properties[2]
            .kind
            .transform
            .as_mut()
            .unwrap()
            .expression = "tf + zz".into();
        let e = c.compile().err().unwrap();
        assert!(e.1.contains("zz"), "{e:?}");
        let mut c = boiler();
        c.asset_models[0].asset_model_properties[4]
            .kind
            .metric
            .as_mut()
            .unwrap()
            .window
            .tumbling
            .interval = "10x".into();
        assert!(
            c.compile()
                .err()
                .unwrap()
                .0
                .ends_with("window.tumbling.interval")
        );
        // A transform reading itself through another.
        let mut c = boiler();
        c.asset_models[0].asset_model_properties[2]
            .kind
            .transform
            .as_mut()
            .unwrap()
            .variables[0]
            .value
            .property_id = "Hot".into();
        assert!(c.compile().err().unwrap().1.contains("depends on itself"));
        assert_eq!(parse_interval("1m").unwrap(), 60_000_000_000);
        assert!(parse_interval("0s").is_err());
    }
}
