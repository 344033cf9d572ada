//! The standalone server without the rest of the binary: same arguments as
//! `lichen stream-manager` (`[stream-manager] --store-root DIR --port N [--auth-token T]...`).

fn main() -> anyhow::Result<()> {
    let mut opts = lichen_streams::StandaloneOptions {
        store_root: "./lichen-streams".into(),
        port: 8088,
        auth_tokens: Vec::new(),
    };
    let mut args = std::env::args().skip(1).filter(|a| a != "stream-manager");
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--store-root" => opts.store_root = value()?.into(),
            "--port" => opts.port = value()?.parse()?,
            "--auth-token" => opts.auth_tokens.push(value()?),
            "--help" | "-h" => {
                println!(
                    "usage: stream_manager [stream-manager] --store-root DIR --port N [--auth-token T]..."
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    tokio::runtime::Runtime::new()?.block_on(lichen_streams::run_standalone(opts))
}
