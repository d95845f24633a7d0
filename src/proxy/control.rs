//! The admin endpoint's view of a running proxy: what it reports, and the
//! runtime control of backends (`drain`, `disable`, `enable`, `weight`) that
//! the admin token allows.

use crate::admin::{Action, Report};
use crate::backends::AdminState;
use crate::config::values::weight;
use crate::metrics;

use super::plan::ProxyStats;
use super::reload::Reloader;

impl Report for Reloader {
    fn prometheus(&self) -> String {
        ProxyStats(self.shared.clone()).prometheus()
    }

    fn status_json(&self) -> String {
        ProxyStats(self.shared.clone()).status_json()
    }

    fn authorize(&self, bearer: &[u8]) -> Option<bool> {
        let plan = self.shared.current();
        let token = plan.config.admin_token.as_ref()?;
        Some(token.matches(bearer))
    }

    fn control(&self, backend: &str, action: Action) -> Result<String, (u16, String)> {
        let plan = self.shared.current();
        let health = &plan.health;
        let named: Vec<usize> = (0..health.len())
            .filter(|&b| health.member(b).name == backend)
            .collect();
        if named.is_empty() {
            let known: Vec<&str> = (health.members().iter()).map(|m| m.name.as_str()).collect();
            return Err((
                404,
                format!(
                    "no backend {backend}; the backends are {}",
                    known.join(", ")
                ),
            ));
        }
        let why = "admin request";
        let mut note = None;
        match action {
            Action::Drain => named
                .iter()
                .for_each(|&b| health.set_admin(b, AdminState::Drain, why)),
            Action::Disable => named
                .iter()
                .for_each(|&b| health.set_admin(b, AdminState::Disabled, why)),
            Action::Enable => named
                .iter()
                .for_each(|&b| health.set_admin(b, AdminState::Ready, why)),
            Action::Weight(w) => {
                let w = weight(u64::from(w)).map_err(|e| (400, format!("weight {w}: {e}")))?;
                for &b in &named {
                    health
                        .member(b)
                        .set_weight(plan.config.backends[b].weight, w);
                }
                // The selectors are built once per plan: a new weight is a new
                // plan over the same configuration.
                self.apply(None)
                    .map_err(|e| (500, format!("weight not applied: {e}")))?;
                if plan.config.algorithm.ignores_weights() {
                    note = Some(format!(
                        "weight {w} is kept, but the algorithm {} does not use weights",
                        plan.config.algorithm
                    ));
                }
            }
        }
        let stats = ProxyStats(self.shared.clone());
        let plan = self.shared.current();
        let view = stats.view(&plan);
        let states: Vec<String> = (view.backends.iter())
            .filter(|b| b.name == backend)
            .map(metrics::backend_json)
            .collect();
        let note = note.map_or(String::new(), |n| {
            format!(",\"note\":{}", metrics::json_string(&n))
        });
        Ok(format!("{{\"backends\":[{}]{note}}}", states.join(",")))
    }
}
