//! Unit conversion for `convert(x, "from", "to")`: each unit is a linear map to its
//! dimension's SI unit.

/// (name, dimension, factor, offset): `si = x * factor + offset`.
const UNITS: &[(&str, &str, f64, f64)] = &[
    ("K", "temperature", 1.0, 0.0),
    ("degC", "temperature", 1.0, 273.15),
    ("C", "temperature", 1.0, 273.15),
    ("degF", "temperature", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
    ("F", "temperature", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
    ("Pa", "pressure", 1.0, 0.0),
    ("hPa", "pressure", 100.0, 0.0),
    ("kPa", "pressure", 1e3, 0.0),
    ("MPa", "pressure", 1e6, 0.0),
    ("bar", "pressure", 1e5, 0.0),
    ("mbar", "pressure", 100.0, 0.0),
    ("psi", "pressure", 6_894.757_293_168, 0.0),
    ("m", "length", 1.0, 0.0),
    ("cm", "length", 0.01, 0.0),
    ("mm", "length", 0.001, 0.0),
    ("km", "length", 1000.0, 0.0),
    ("in", "length", 0.0254, 0.0),
    ("ft", "length", 0.3048, 0.0),
    ("kg", "mass", 1.0, 0.0),
    ("g", "mass", 0.001, 0.0),
    ("t", "mass", 1000.0, 0.0),
    ("lb", "mass", 0.453_592_37, 0.0),
    ("m3", "volume", 1.0, 0.0),
    ("L", "volume", 0.001, 0.0),
    ("gal", "volume", 0.003_785_411_784, 0.0),
    ("m3/h", "flow", 1.0 / 3600.0, 0.0),
    ("L/min", "flow", 0.001 / 60.0, 0.0),
    ("L/s", "flow", 0.001, 0.0),
    ("gal/min", "flow", 0.003_785_411_784 / 60.0, 0.0),
    ("J", "energy", 1.0, 0.0),
    ("kJ", "energy", 1e3, 0.0),
    ("Wh", "energy", 3600.0, 0.0),
    ("kWh", "energy", 3.6e6, 0.0),
    ("W", "power", 1.0, 0.0),
    ("kW", "power", 1e3, 0.0),
    ("MW", "power", 1e6, 0.0),
    ("hp", "power", 745.699_871_582_270_2, 0.0),
    ("m/s", "speed", 1.0, 0.0),
    ("km/h", "speed", 1.0 / 3.6, 0.0),
    ("mph", "speed", 0.447_04, 0.0),
    ("s", "time", 1.0, 0.0),
    ("min", "time", 60.0, 0.0),
    ("h", "time", 3600.0, 0.0),
    ("rpm", "frequency", 1.0 / 60.0, 0.0),
    ("Hz", "frequency", 1.0, 0.0),
    ("%", "ratio", 0.01, 0.0),
    ("ratio", "ratio", 1.0, 0.0),
];

fn unit(name: &str) -> Result<(&'static str, f64, f64), String> {
    UNITS
        .iter()
        .find(|u| u.0 == name)
        .map(|u| (u.1, u.2, u.3))
        .ok_or_else(|| {
            let known: Vec<&str> = UNITS.iter().map(|u| u.0).collect();
            format!("unknown unit {name:?}; known units: {}", known.join(", "))
        })
}

/// Converts `x` from one unit to another of the same dimension.
pub fn convert(x: f64, from: &str, to: &str) -> Result<f64, String> {
    let (dim_a, fa, oa) = unit(from)?;
    let (dim_b, fb, ob) = unit(to)?;
    if dim_a != dim_b {
        return Err(format!("cannot convert {from} ({dim_a}) to {to} ({dim_b})"));
    }
    Ok((x * fa + oa - ob) / fb)
}

/// Checks a unit name at configuration time.
pub fn check(name: &str) -> Result<(), String> {
    unit(name).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_within_a_dimension() {
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(convert(100.0, "degC", "degF").unwrap(), 212.0));
        assert!(near(convert(0.0, "degC", "K").unwrap(), 273.15));
        assert!(near(convert(1.0, "bar", "kPa").unwrap(), 100.0));
        assert!(near(convert(1.0, "kWh", "J").unwrap(), 3.6e6));
        assert!(near(convert(12.0, "in", "ft").unwrap(), 1.0));
        assert!(convert(1.0, "bar", "m").unwrap_err().contains("pressure"));
        assert!(
            convert(1.0, "furlong", "m")
                .unwrap_err()
                .contains("unknown unit")
        );
    }
}
