//! Starts what a scenario names: the backends (`loadgen backend` or nginx) and
//! each proxy under test (speedmimi with a generated config, or a peer from a
//! template), logs to the run directory, and returns their addresses and pids.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::procs::{self, Children};
use super::scenario::{BackendKind, Backends, TargetKind, TargetSpec};
use super::BenchError;

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A started process: where it listens and the pid of its root process.
#[derive(Debug, Clone)]
pub struct Started {
    pub name: String,
    pub kind: TargetKind,
    pub addr: String,
    pub pid: u32,
    /// Some: `addr` is a TLS listener with a certificate from the bench's CA.
    pub tls: Option<BenchPki>,
}

/// The run's throwaway certificates (ECDSA P-256, made by rcgen into
/// DIR/tls/): a CA the client trusts and one server certificate it signed.
#[derive(Debug, Clone)]
pub struct BenchPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The DNS name on the certificate, sent as SNI.
    pub server_name: String,
}

/// Makes the run's CA and server certificate. They live only in the run
/// directory (results/ is ignored by git) and are never reused.
pub fn make_pki(dir: &Path) -> Result<BenchPki, BenchError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let err = |e: &dyn std::fmt::Display| BenchError::Start(format!("TLS certificates: {e}"));
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir)
        .map_err(|e| BenchError::Start(format!("cannot create {}: {e}", tls_dir.display())))?;
    // KeyPair::generate() is ECDSA P-256 with SHA-256: the usual web key.
    let ca_key = KeyPair::generate().map_err(|e| err(&e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| err(&e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "loadgen bench throwaway CA");
    let ca = ca_params.self_signed(&ca_key).map_err(|e| err(&e))?;
    let server_name = "localhost".to_string();
    let key = KeyPair::generate().map_err(|e| err(&e))?;
    let cert = CertificateParams::new(vec![server_name.clone(), "127.0.0.1".to_string()])
        .map_err(|e| err(&e))?
        .signed_by(&key, &ca, &ca_key)
        .map_err(|e| err(&e))?;
    let pki = BenchPki {
        ca: tls_dir.join("ca.pem"),
        cert: tls_dir.join("server.pem"),
        key: tls_dir.join("server.key"),
        server_name,
    };
    for (path, text) in [
        (&pki.ca, ca.pem()),
        (&pki.cert, cert.pem()),
        (&pki.key, key.serialize_pem()),
    ] {
        std::fs::write(path, text)
            .map_err(|e| BenchError::Start(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(pki)
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File, BenchError> {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .map_err(|e| BenchError::Start(format!("cannot create {}: {e}", p.display())))
}

fn render_template(
    template: &Path,
    work: &Path,
    port: u16,
    backend_port: u16,
    out: &Path,
) -> Result<(), BenchError> {
    let text = std::fs::read_to_string(template).map_err(|e| {
        BenchError::Start(format!("cannot read template {}: {e}", template.display()))
    })?;
    let text = text
        .replace("__DIR__", &work.display().to_string())
        .replace("__BACKEND_PORT__", &backend_port.to_string())
        .replace("__PORT__", &port.to_string());
    std::fs::write(out, text)
        .map_err(|e| BenchError::Start(format!("cannot write {}: {e}", out.display())))
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// Starts `count` backends; returns their addresses and pids.
pub fn start_backends(
    spec: &Backends,
    bin: &Path,
    peers_dir: &Path,
    dir: &Path,
    children: &mut Children,
) -> Result<Vec<Started>, BenchError> {
    let mut out = Vec::new();
    for i in 0..spec.count {
        let name = format!("backend-{i}");
        match spec.kind {
            BackendKind::Loadgen => {
                let mut cmd = Command::new(bin.join("loadgen"));
                cmd.args([
                    "backend",
                    "--listen",
                    "127.0.0.1:0",
                    "--workers",
                    &spec.workers.to_string(),
                    "--body-size",
                    &spec.body_size.to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(log_file(dir, &format!("{name}.err"))?);
                let m = children.spawn(&name, &mut cmd)?;
                let pid = m.pid();
                let addr = procs::read_listen_addr(m, START_TIMEOUT)?;
                out.push(Started {
                    name,
                    kind: TargetKind::Speedmimi,
                    addr,
                    pid,
                    tls: None,
                });
            }
            BackendKind::Nginx => {
                let port = procs::free_port()?;
                let work = dir.join(&name);
                std::fs::create_dir_all(&work).map_err(|e| {
                    BenchError::Start(format!("cannot create {}: {e}", work.display()))
                })?;
                let conf = work.join("nginx.conf");
                render_template(&peers_dir.join("nginx-backend.conf"), &work, port, 0, &conf)?;
                let pid = start_nginx(&name, &conf, &work, dir, children)?;
                let addr = format!("127.0.0.1:{port}");
                procs::wait_port(&addr, START_TIMEOUT)?;
                out.push(Started {
                    name,
                    kind: TargetKind::Nginx,
                    addr,
                    pid,
                    tls: None,
                });
            }
        }
    }
    Ok(out)
}

fn start_nginx(
    name: &str,
    conf: &Path,
    work: &Path,
    dir: &Path,
    children: &mut Children,
) -> Result<u32, BenchError> {
    let mut cmd = Command::new("nginx");
    cmd.arg("-c")
        .arg(conf)
        .arg("-p")
        .arg(work)
        .args(["-g", "daemon off;"])
        .stdout(log_file(dir, &format!("{name}.out"))?)
        .stderr(log_file(dir, &format!("{name}.err"))?);
    Ok(children.spawn(name, &mut cmd)?.pid())
}

/// Deep-merges `over` into `base` (mappings merge key by key, anything else replaces).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

fn yaml(s: &str) -> Value {
    serde_yaml_ng::from_str(s).expect("built-in YAML parses")
}

/// The speedmimi config for a run: listen and admin on free ports, every backend
/// in the `default` upstream, then the scenario's own `config` on top.
pub fn speedmimi_config(backends: &[Started], extra: Option<&Value>) -> Value {
    let mut cfg = yaml(
        "server: { listen: '127.0.0.1:0', graceful_timeout: 1s }\n\
         admin: { listen: '127.0.0.1:0' }\n\
         routing: { default: { upstream: default, load_balancer: round_robin } }\n",
    );
    let list: Vec<Value> = backends
        .iter()
        .map(|b| {
            let mut m = Mapping::new();
            m.insert("addr".into(), b.addr.clone().into());
            Value::Mapping(m)
        })
        .collect();
    let mut up = Mapping::new();
    up.insert("backends".into(), Value::Sequence(list));
    up.insert("keepalive".into(), 1024.into());
    let mut ups = Mapping::new();
    ups.insert("default".into(), Value::Mapping(up));
    if let Value::Mapping(m) = &mut cfg {
        m.insert("upstreams".into(), Value::Mapping(ups));
    }
    if let Some(extra) = extra {
        merge(&mut cfg, extra);
    }
    cfg
}

/// `server.tls` of a speedmimi config: the bench's certificate for a TLS
/// instance (over any `handshake_timeout` etc. the scenario set), nothing for a
/// plaintext one.
fn set_server_tls(cfg: &mut Value, pki: Option<&BenchPki>) {
    let Some(Value::Mapping(server)) = cfg.get_mut("server") else {
        return;
    };
    match pki {
        None => {
            server.remove("tls");
        }
        Some(p) => {
            let mut cert = Mapping::new();
            cert.insert("cert".into(), p.cert.display().to_string().into());
            cert.insert("key".into(), p.key.display().to_string().into());
            let mut tls = Mapping::new();
            tls.insert("certificates".into(), Value::Sequence(vec![cert.into()]));
            let slot = server
                .entry("tls".into())
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            merge(slot, &Value::Mapping(tls));
        }
    }
}

/// Starts one proxy under test in front of `backends`; with `tls`, an instance
/// of it whose listener terminates TLS (a kind speedmimi target only: the
/// scenario's validation refuses the others).
#[allow(clippy::too_many_arguments)]
pub fn start_target(
    spec: &TargetSpec,
    scenario_dir: &Path,
    peers_dir: &Path,
    bin: &Path,
    backends: &[Started],
    dir: &Path,
    children: &mut Children,
    tls: Option<&BenchPki>,
) -> Result<Started, BenchError> {
    let name = &spec.name;
    match spec.kind {
        TargetKind::Speedmimi => {
            let mut cfg = speedmimi_config(backends, spec.config.as_ref());
            set_server_tls(&mut cfg, tls);
            // One process per listener: the proxy has one listener (plaintext or TLS).
            let file = match tls {
                Some(_) => format!("{name}-tls"),
                None => name.clone(),
            };
            let path = dir.join(format!("{file}.yaml"));
            let text = serde_yaml_ng::to_string(&cfg)
                .map_err(|e| BenchError::Start(format!("{name}: config: {e}")))?;
            std::fs::write(&path, text)
                .map_err(|e| BenchError::Start(format!("cannot write {}: {e}", path.display())))?;
            let mut cmd = Command::new(bin.join("speedmimi"));
            cmd.arg("--config")
                .arg(&path)
                .stdout(Stdio::piped())
                .stderr(log_file(dir, &format!("{file}.err"))?);
            let m = children.spawn(&file, &mut cmd)?;
            let pid = m.pid();
            let addr = procs::read_listen_addr(m, START_TIMEOUT)?;
            procs::wait_port(&addr, START_TIMEOUT)?;
            Ok(Started {
                name: name.clone(),
                kind: spec.kind,
                addr,
                pid,
                tls: tls.cloned(),
            })
        }
        TargetKind::Nginx | TargetKind::Haproxy => {
            let default_template = match spec.kind {
                TargetKind::Nginx => "nginx-proxy.conf",
                _ => "haproxy.cfg",
            };
            let template: PathBuf = match &spec.template {
                Some(t) => scenario_dir.join(t),
                None => peers_dir.join(default_template),
            };
            let port = procs::free_port()?;
            let work = dir.join(name);
            std::fs::create_dir_all(&work)
                .map_err(|e| BenchError::Start(format!("cannot create {}: {e}", work.display())))?;
            let conf = work.join(default_template);
            let backend_port = port_of(&backends[0].addr);
            render_template(&template, &work, port, backend_port, &conf)?;
            let pid = if spec.kind == TargetKind::Nginx {
                start_nginx(name, &conf, &work, dir, children)?
            } else {
                let mut cmd = Command::new("haproxy");
                cmd.arg("-f")
                    .arg(&conf)
                    .stdout(log_file(dir, &format!("{name}.out"))?)
                    .stderr(log_file(dir, &format!("{name}.err"))?);
                children.spawn(name, &mut cmd)?.pid()
            };
            let addr = format!("127.0.0.1:{port}");
            procs::wait_port(&addr, START_TIMEOUT)?;
            Ok(Started {
                name: name.clone(),
                kind: spec.kind,
                addr,
                pid,
                tls: None,
            })
        }
    }
}
