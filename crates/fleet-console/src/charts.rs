//! Line charts drawn on the server as SVG with plotters, inlined into pages inside a `<figure>`
//! whose label says in words what the chart shows (the latest values), for screen readers.
//! Only fixed strings (series names, axis labels) reach the SVG's text.

use maud::{Markup, PreEscaped, html};
use plotters::prelude::*;

/// One line: its name, colour, and points (milliseconds since the epoch, value).
pub(crate) struct Series<'a> {
    pub name: &'a str,
    pub color: RGBColor,
    pub points: Vec<(i64, f64)>,
}

pub(crate) const BLUE: RGBColor = RGBColor(11, 92, 173);
pub(crate) const GREEN: RGBColor = RGBColor(26, 107, 50);
pub(crate) const RED: RGBColor = RGBColor(164, 22, 26);
pub(crate) const GREY: RGBColor = RGBColor(74, 83, 96);

/// A time-series chart; `x` is shown as minutes before now.
pub(crate) fn time_chart(
    id: &str,
    caption: &str,
    y_label: &str,
    series: &[Series<'_>],
    now_ms: i64,
) -> Markup {
    let points: usize = series.iter().map(|s| s.points.len()).sum();
    let summary = series
        .iter()
        .map(|s| match s.points.last() {
            Some((_, v)) if v.fract() == 0.0 => format!("{} now {v:.0}", s.name),
            Some((_, v)) => format!("{} now {v:.1}", s.name),
            None => format!("{}: no data", s.name),
        })
        .collect::<Vec<_>>()
        .join("; ");
    if points == 0 {
        return html! {
            figure.chart data-testid=(id) {
                figcaption { (caption) }
                p.muted { "No samples yet." }
            }
        };
    }
    let svg = draw(y_label, series, now_ms).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "console: chart not drawn");
        String::new()
    });
    html! {
        figure.chart data-testid=(id) role="img" aria-label={(caption) ": " (summary)} {
            (PreEscaped(svg))
            figcaption { (caption) " — " (summary) }
        }
    }
}

fn draw(
    y_label: &str,
    series: &[Series<'_>],
    now_ms: i64,
) -> Result<String, Box<dyn std::error::Error>> {
    let mins = |t: i64| (t - now_ms) as f64 / 60_000.0;
    let x_min = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| mins(p.0)))
        .fold(0.0f64, f64::min)
        .min(-1.0);
    let span = -x_min;
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_max = if y_max <= 0.0 { 1.0 } else { y_max * 1.15 };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (640, 260)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x_min..0.0, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("minutes ago")
            .y_desc(y_label)
            .x_labels(6)
            .y_labels(5)
            .light_line_style(RGBColor(230, 233, 237))
            .label_style(("sans-serif", 15).into_font().color(&GREY))
            .axis_desc_style(("sans-serif", 15).into_font().color(&GREY))
            .x_label_formatter(&|x| {
                // Whole minutes when the span allows, else tenths; never "-0".
                // (Adding 0.0 turns -0.0 into 0.0.)
                let m = (-x).max(0.0) + 0.0;
                if span >= 6.0 {
                    format!("{m:.0}")
                } else {
                    format!("{m:.1}")
                }
            })
            .draw()?;
        for s in series {
            let color = s.color;
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().map(|p| (mins(p.0), p.1)),
                    color.stroke_width(2),
                ))?
                .label(s.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(201, 209, 218))
            .label_font(("sans-serif", 15).into_font())
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
    }
    Ok(out)
}
