//! The rollout-progress-over-time chart: how many of a deployment's devices were queued, in
//! progress, succeeded or failed at each moment since it was created, drawn as stacked areas
//! into an SVG with plotters.
//!
//! The history is rebuilt from the times the fleet keeps durably (each job execution's queued,
//! started and last-updated times, and each device's deployment row), so the chart survives a
//! fleet restart and needs no sampler.

use crate::charts;
use maud::{Markup, PreEscaped, html};
use plotters::prelude::*;

/// The buckets the chart stacks, bottom first, with their colours and labels.
pub(crate) const BUCKETS: [(Bucket, &str, RGBColor); 4] = [
    (Bucket::Succeeded, "succeeded", charts::GREEN),
    (Bucket::Failed, "failed / timed out", charts::RED),
    (Bucket::InProgress, "in progress", charts::BLUE),
    (Bucket::Queued, "queued", RGBColor(160, 166, 175)),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bucket {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    /// Canceled or removed: no longer counted.
    Gone,
}

impl Bucket {
    pub(crate) fn of(status: &str) -> Bucket {
        match status {
            "QUEUED" => Bucket::Queued,
            "IN_PROGRESS" => Bucket::InProgress,
            "SUCCEEDED" | "COMPLETED" => Bucket::Succeeded,
            "FAILED" | "TIMED_OUT" | "REJECTED" => Bucket::Failed,
            _ => Bucket::Gone,
        }
    }
}

/// One device's known transitions: (epoch ms, status), any order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    pub events: Vec<(i64, String)>,
}

/// Counts per bucket at each change, as (seconds since `start`, [queued, in progress,
/// succeeded, failed]); the last point is at `now`.
pub(crate) fn series(start_ms: i64, now_ms: i64, devices: &[Timeline]) -> Vec<(f64, [u32; 4])> {
    let mut changes: Vec<(i64, usize, Bucket)> = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let mut ev = d.events.clone();
        ev.sort_by_key(|(t, _)| *t);
        for (t, s) in ev {
            changes.push((t.max(start_ms), i, Bucket::of(&s)));
        }
    }
    changes.sort_by_key(|(t, i, _)| (*t, *i));
    let mut state: Vec<Option<Bucket>> = vec![None; devices.len()];
    let count = |state: &[Option<Bucket>]| {
        let mut c = [0u32; 4];
        for b in state.iter().flatten() {
            match b {
                Bucket::Queued => c[0] += 1,
                Bucket::InProgress => c[1] += 1,
                Bucket::Succeeded => c[2] += 1,
                Bucket::Failed => c[3] += 1,
                Bucket::Gone => {}
            }
        }
        c
    };
    let secs = |t: i64| (t - start_ms).max(0) as f64 / 1000.0;
    let mut out = vec![(0.0, [0u32; 4])];
    for (t, i, b) in changes {
        state[i] = Some(b);
        let c = count(&state);
        match out.last_mut() {
            // Changes at the same instant make one point.
            Some(last) if last.0 == secs(t) => last.1 = c,
            _ => out.push((secs(t), c)),
        }
    }
    let end = secs(now_ms.max(start_ms)).max(out.last().map_or(0.0, |p| p.0));
    let last = out.last().map_or([0; 4], |p| p.1);
    out.push((end, last));
    out
}

/// The chart inside a `<figure>` whose label says the latest counts in words (for screen
/// readers, and for anyone who would rather read).
pub(crate) fn figure(points: &[(f64, [u32; 4])], devices: usize) -> Markup {
    let last = points.last().map_or([0; 4], |p| p.1);
    let summary = format!(
        "{} succeeded, {} failed, {} in progress, {} queued of {devices} devices",
        last[2], last[3], last[1], last[0]
    );
    html! {
        figure.chart data-testid="rollout-chart" role="img" aria-label={"Rollout progress over time: " (summary)} {
            (PreEscaped(svg(points, devices, 640, 260)))
            figcaption { "Rollout progress over time — now " (summary) }
        }
    }
}

/// The stacked-area SVG (`width`×`height` pixels) of `points` (from [`series`]).
pub(crate) fn svg(points: &[(f64, [u32; 4])], devices: usize, width: u32, height: u32) -> String {
    let mut out = String::new();
    if let Err(e) = draw(&mut out, points, devices, width, height) {
        // A drawing error leaves a chart that says so rather than a broken image.
        tracing::warn!("drawing the rollout chart: {e}");
        out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\">\
             <text x=\"10\" y=\"20\">the chart could not be drawn</text></svg>"
        );
    }
    out
}

fn draw(
    out: &mut String,
    points: &[(f64, [u32; 4])],
    devices: usize,
    width: u32,
    height: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let max_x = points.last().map_or(1.0, |p| p.0).max(1.0);
    let max_y = points
        .iter()
        .map(|p| p.1.iter().sum::<u32>())
        .max()
        .unwrap_or(0)
        .max(devices as u32)
        .max(1);
    // Seconds, minutes or hours, whichever keeps the axis readable.
    let (unit, per) = match max_x {
        x if x > 3.0 * 3600.0 => ("hours", 3600.0),
        x if x > 300.0 => ("minutes", 60.0),
        _ => ("seconds", 1.0),
    };
    let decimals = if max_x / per < 10.0 { 1 } else { 0 };
    let x_desc = format!("{unit} since the deployment was created");
    {
        let root = SVGBackend::with_string(out, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        // The legend has its own column, so it never hides the areas.
        let (plot, legend) = root.split_horizontally(width.saturating_sub(150));
        let mut chart = ChartBuilder::on(&plot)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..max_x / per, 0.0..(max_y as f64))?;
        chart
            .configure_mesh()
            .x_desc(x_desc.as_str())
            .y_desc("devices")
            .y_labels(max_y.min(10) as usize + 1)
            .x_labels(6)
            .light_line_style(RGBColor(230, 233, 237))
            .label_style(("sans-serif", 13).into_font().color(&charts::GREY))
            .axis_desc_style(("sans-serif", 13).into_font().color(&charts::GREY))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_label_formatter(&|v| format!("{v:.decimals$}"))
            .draw()?;
        // Stacked: each area's top is the sum of its bucket and those below it. Steps: a count
        // holds until the next change.
        let order = [2usize, 3, 1, 0];
        for (layer, (_, _, colour)) in BUCKETS.iter().enumerate().rev() {
            let below: &[usize] = &order[..=layer];
            let mut stepped: Vec<(f64, f64)> = Vec::new();
            for (i, (x, c)) in points.iter().enumerate() {
                let x = *x / per;
                let top: u32 = below.iter().map(|k| c[*k]).sum();
                if i > 0 {
                    let prev = points[i - 1].1;
                    let prev_top: u32 = below.iter().map(|k| prev[*k]).sum();
                    stepped.push((x, prev_top as f64));
                }
                stepped.push((x, top as f64));
            }
            chart.draw_series(
                AreaSeries::new(stepped, 0.0, colour.mix(0.85)).border_style(*colour),
            )?;
        }
        // Top to bottom as stacked.
        for (i, (_, label, colour)) in BUCKETS.iter().rev().enumerate() {
            let y = 20 + i as i32 * 24;
            legend.draw(&Rectangle::new([(8, y), (22, y + 14)], colour.filled()))?;
            legend.draw(&Text::new(
                *label,
                (30, y + 1),
                ("sans-serif", 13).into_font().color(&charts::GREY),
            ))?;
        }
        root.present()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tl(ev: &[(i64, &str)]) -> Timeline {
        Timeline {
            events: ev.iter().map(|(t, s)| (*t, s.to_string())).collect(),
        }
    }

    #[test]
    fn counts_follow_each_device_through_its_states() {
        let devices = [
            tl(&[(1000, "QUEUED"), (3000, "IN_PROGRESS"), (5000, "SUCCEEDED")]),
            tl(&[(1000, "QUEUED"), (4000, "IN_PROGRESS"), (6000, "FAILED")]),
        ];
        let s = series(0, 10_000, &devices);
        assert_eq!(s.first().unwrap(), &(0.0, [0, 0, 0, 0]));
        assert!(s.contains(&(1.0, [2, 0, 0, 0])));
        assert!(s.contains(&(4.0, [0, 2, 0, 0])));
        assert!(s.contains(&(5.0, [0, 1, 1, 0])));
        assert_eq!(s.last().unwrap(), &(10.0, [0, 0, 1, 1]));
    }

    #[test]
    fn the_svg_has_a_legend_and_an_area_per_bucket() {
        let devices = [tl(&[(0, "QUEUED"), (2000, "SUCCEEDED")])];
        let svg = svg(&series(0, 3000, &devices), 1, 600, 300);
        assert!(svg.starts_with("<svg"), "{svg}");
        // The console's CSP allows no inline style attributes.
        assert!(!svg.contains("style=\""), "{svg}");
        for (_, label, _) in BUCKETS {
            assert!(svg.contains(label), "{label} missing from the legend");
        }
        assert!(svg.matches("<polygon").count() + svg.matches("<path").count() >= 4);
    }
}
