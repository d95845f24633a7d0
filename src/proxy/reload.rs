//! Reloading a running proxy: a new plan for every worker, restart-only settings
//! reported and kept, backends that stay keeping their state.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backends::Checker;
use crate::config::ProxyConfig;
use crate::runtime::{self, Control, StartError};

use super::plan::{Plan, Shared};

/// How long a backend a reload took out is remembered, and how many at most.
const RETIRED_FOR: Duration = Duration::from_secs(600);
const MAX_RETIRED: usize = 1024;

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Backends that joined and left, by `host:port`.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Restart-only settings that differ from those in force (not applied), by
    /// name in the settings table (`listen`, `max_header_bytes`).
    pub need_restart: Vec<&'static str>,
    /// The other settings that changed (applied), by config-file key
    /// (`algorithm`, `timeouts.connect`).
    pub changed: Vec<&'static str>,
    /// Backends that stayed with another weight: `name old->new`.
    pub reweighted: Vec<String>,
    /// Nothing that a reload applies changed.
    pub unchanged: bool,
    /// The TLS certificates changed (new handshakes use the new ones).
    pub certificates: bool,
    /// Every worker confirmed it serves new requests with the new configuration
    /// (a worker busy for longer than a second confirms later).
    pub confirmed: bool,
}

/// Applies a new configuration to a running proxy, from any thread.
#[derive(Clone)]
pub struct Reloader {
    pub(super) shared: Arc<Shared>,
    pub(super) controls: Vec<runtime::ControlHandle<Arc<Plan>>>,
    pub(super) checker: Arc<Mutex<Option<Checker>>>,
}

impl Reloader {
    /// Apply `config`: backends, algorithm, health checks and passive health,
    /// timeouts, retries, `--max-connections` and `--max-body-bytes` take effect in
    /// every worker for each new request; exchanges in flight finish as they began.
    /// Backends that stay (same address and name) keep their health, counters and
    /// pooled connections. The restart-only settings keep their running values and
    /// are listed in the result.
    pub fn reload(&self, config: ProxyConfig) -> Result<Reloaded, StartError> {
        if config.backends.is_empty() {
            return Err(StartError::NoBackends);
        }
        self.apply(Some(config))
    }

    /// Read the TLS certificates again and serve new handshakes with them; the
    /// rest of the configuration stays (a SIGHUP when the configuration is the
    /// command line). A bad file changes nothing.
    pub fn reload_certificates(&self) -> Result<Reloaded, StartError> {
        self.apply(None)
    }

    /// Open the access log file again (after logrotate moved it): lines from
    /// now on go to a new file at its path. Nothing when it is off or stdout.
    /// Returns the file's path, if one was opened.
    pub fn reopen_access_log(&self) -> std::io::Result<Option<std::path::PathBuf>> {
        match &self.shared.access {
            Some(sink) => sink.reopen().map(|p| p.cloned()),
            None => Ok(None),
        }
    }

    /// Some listener speaks TLS.
    pub fn serves_tls(&self) -> bool {
        self.shared.current().config.serves_tls()
    }

    /// Build a new plan from `config` and hand it to every worker; `None`: from
    /// the configuration in force, read under the reload lock (a weight set at
    /// run time changes the plan, not the configuration, and must not undo a
    /// reload that lands meanwhile).
    pub(super) fn apply(&self, config: Option<ProxyConfig>) -> Result<Reloaded, StartError> {
        // One reload at a time: the lock is held throughout.
        let mut current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let rebuild = config.is_none();
        let mut config = config.unwrap_or_else(|| current.config.clone());
        let old = &current.config;
        // The settings that shape sockets, threads and buffers made once (the
        // table marks them restart): a reload reports a change and keeps the
        // running value.
        let mut result = Reloaded {
            need_restart: crate::config::table::keep_restart_only(&mut config, old)
                .into_iter()
                .map(|s| s.name)
                .collect(),
            ..Reloaded::default()
        };
        config.log_health = old.log_health;
        result.changed = crate::config::changed_settings(&config, old);
        result.reweighted = (config.backends.iter())
            .filter_map(|b| {
                let was = old
                    .backends
                    .iter()
                    .find(|o| o.addr == b.addr && o.name() == b.name() && o.weight != b.weight)?;
                Some(format!("{} {}->{}", b.name(), was.weight, b.weight))
            })
            .collect();
        // Certificates are read again on every reload, so a rotated file is
        // picked up with nothing else changed; a bad one fails the reload whole.
        let (tls, backend_tls) = super::load_tls(&config)?;
        let same_tls = match (&tls, &current.tls) {
            (Some(new), Some(old)) => new.same_certificates(old),
            (None, None) => true,
            _ => false,
        };
        result.certificates = !same_tls;
        // The backends' roots are read again too, but only a change of the
        // certificates served tells a reload apart from nothing to do.
        if config == *old && same_tls && !rebuild {
            result.unchanged = true;
            return Ok(result);
        }
        let has = |list: &[crate::config::Backend], b: &crate::config::Backend| {
            // A change of send_proxy makes another backend: its connections
            // told clients' addresses, and none of them may serve otherwise.
            list.iter().any(|o| {
                o.addr == b.addr
                    && o.name() == b.name()
                    && o.tls == b.tls
                    && o.send_proxy == b.send_proxy
            })
        };
        result.added = (config.backends.iter())
            .filter(|b| !has(&old.backends, b))
            .map(|b| b.name().to_string())
            .collect();
        result.removed = (old.backends.iter())
            .filter(|b| !has(&config.backends, b))
            .map(|b| b.name().to_string())
            .collect();
        // The members in force, and those retired lately, may carry on.
        let mut retired = self
            .shared
            .retired
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        retired.retain(|(at, _)| now.duration_since(*at) < RETIRED_FOR);
        let mut members = current.health.members().to_vec();
        members.extend(retired.iter().map(|(_, m)| Arc::clone(m)));
        let plan = Arc::new(Plan::build(
            current.number + 1,
            config,
            (tls, backend_tls),
            self.controls.len(),
            &members,
        ));
        let kept = |m: &Arc<crate::backends::Member>| {
            plan.health.members().iter().any(|n| Arc::ptr_eq(n, m))
        };
        retired.retain(|(_, m)| !kept(m));
        for m in current.health.members() {
            if !kept(m) {
                retired.push((now, Arc::clone(m)));
            }
        }
        let over = retired.len().saturating_sub(MAX_RETIRED);
        retired.drain(..over);
        drop(retired);
        // The old checks stop before the workers switch; the new ones start on the
        // new set, each backend from its last verdict.
        let mut checker = self.checker.lock().unwrap_or_else(|e| e.into_inner());
        drop(checker.take());
        if plan.config.health_check.is_none() {
            // Without checks, no check verdict may keep a backend out.
            plan.health.checks_off();
        }
        for c in &self.controls {
            c.send(Control::Reload(Arc::clone(&plan)));
        }
        if let Some(check) = &plan.config.health_check {
            *checker = Some(
                Checker::spawn(
                    Arc::clone(&plan.health),
                    check.clone(),
                    plan.backend_tls.clone(),
                )
                .map_err(StartError::Spawn)?,
            );
        }
        let number = plan.number;
        *current = plan;
        drop(current);
        // Wait for every worker to switch, so that "reloaded" means it.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let stats = &self.shared.stats;
            if stats
                .iter()
                .all(|s| s.0.plan.load(Ordering::Relaxed) >= number)
            {
                result.confirmed = true;
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(result)
    }
}
