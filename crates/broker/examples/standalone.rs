//! The standalone broker without the rest of the `lichen` binary, with the same arguments as
//! `lichen broker` (a leading `broker` word is accepted): handy for the compat suite.
//!
//! `cargo run -p lichen-broker --example standalone -- --listen tcp://127.0.0.1:1883`

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut opts = lichen_broker::StandaloneOptions::default();
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("broker") {
        args.next();
    }
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => opts.listen.push(value()?),
            "--cert" => opts.cert = Some(value()?.into()),
            "--key" => opts.key = Some(value()?.into()),
            "--client-ca" => opts.client_ca = Some(value()?.into()),
            "--max-packet-size" => opts.max_packet_size = Some(value()?.parse()?),
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    if opts.listen.is_empty() {
        opts.listen.push("tcp://127.0.0.1:1883".into());
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(lichen_broker::run_standalone(opts))
}
