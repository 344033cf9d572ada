//! `profile MODEL.onnx SHAPE [SHAPE…]`: where a model's time goes in tract, with and without
//! this crate's rewrites, one thread. SHAPE is like `1x3x48x192` (f32 inputs).
//!
//! ```text
//! cargo run --release -p lichen-inference --example profile -- model.onnx 1x3x48x192
//! ```

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((path, shapes)) = args.split_first().filter(|(_, s)| !s.is_empty()) else {
        eprintln!("usage: profile MODEL.onnx SHAPE [SHAPE…]   (SHAPE like 1x3x48x192)");
        std::process::exit(2);
    };
    let shapes: Vec<Vec<usize>> = shapes
        .iter()
        .map(|s| {
            s.split('x')
                .map(|d| d.parse().expect("a dimension"))
                .collect()
        })
        .collect();
    for rewrites in [false, true] {
        let (times, median) =
            lichen_inference::profile_operators(path.as_ref(), &shapes, rewrites, 300)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
        let total: f64 = times.iter().map(|t| t.ms).sum();
        println!(
            "\n{}: median run {median:.3} ms",
            if rewrites {
                "with lichen's rewrites"
            } else {
                "tract alone"
            }
        );
        println!("| operator | nodes | ms per run | share |\n|---|---:|---:|---:|");
        for t in times.iter().filter(|t| t.ms >= 0.001) {
            let share = 100.0 * t.ms / total;
            println!(
                "| {} | {} | {:.3} | {share:.1} % |",
                t.operator, t.nodes, t.ms
            );
        }
    }
}
