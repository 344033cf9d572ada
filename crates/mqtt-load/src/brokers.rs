//! Starting and stopping the brokers under test, and what /proc says about them.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start one broker.
#[derive(Debug, Clone)]
pub enum BrokerKind {
    /// Ours: a program taking `--listen tcp://127.0.0.1:<port>` after `args`
    /// (`lichen broker`, or this tool's own `broker` subcommand).
    Lichen { program: PathBuf, args: Vec<String> },
    /// mosquitto with a generated configuration file.
    Mosquitto { program: PathBuf },
}

/// A broker process on a free loopback port; stopped on drop.
pub struct RunningBroker {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind a probe port")?;
    Ok(l.local_addr()?.port())
}

impl RunningBroker {
    pub fn start(kind: &BrokerKind) -> anyhow::Result<RunningBroker> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = tempfile::tempdir()?;
        let (name, mut cmd) = match kind {
            BrokerKind::Lichen { program, args } => {
                let mut c = Command::new(program);
                c.args(args)
                    .arg("--listen")
                    .arg(format!("tcp://127.0.0.1:{port}"));
                ("lichen", c)
            }
            BrokerKind::Mosquitto { program } => {
                let conf = dir.path().join("mosquitto.conf");
                // The queue bound is raised so that mosquitto keeps every QoS 1 message; the
                // in-flight window stays at its default of 20, the same as ours for 3.1.1.
                std::fs::write(
                    &conf,
                    format!(
                        "listener {port} 127.0.0.1\nallow_anonymous true\n\
                         max_queued_messages 10000000\nmax_connections -1\n\
                         persistence false\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\n"
                    ),
                )?;
                let mut c = Command::new(program);
                c.arg("-c").arg(&conf);
                ("mosquitto", c)
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("start {name} ({cmd:?})"))?;
        let mut broker = RunningBroker {
            name,
            addr,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = broker.child.try_wait()? {
                bail!("{name} exited during start-up with {status}");
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(broker);
            }
            if Instant::now() > deadline {
                bail!("{name} does not listen on {addr} after 15 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stats(&self) -> anyhow::Result<ProcStats> {
        ProcStats::read(self.pid())
    }

    /// SIGTERM, then SIGKILL if it has not gone within 5 s.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate();
        Ok(())
    }

    fn terminate(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signals our own child, which has not been reaped (try_wait saw it running).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Resident memory and CPU time of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

impl ProcStats {
    pub fn read(pid: u32) -> anyhow::Result<ProcStats> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("read /proc/{pid}/status"))?;
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("read /proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc/<pid>/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .context("malformed /proc/<pid>/stat")
        };
        // Field 14 is the 12th after the state (field 3).
        let (utime, stime) = (ticks(11)?, ticks(12)?);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Ok(ProcStats {
            rss_bytes: rss_kb * 1024,
            cpu_seconds: (utime + stime) as f64 / hz,
        })
    }
}

/// Raises this process's open-file limit to its hard limit (children inherit it).
/// Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the duration of both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}
