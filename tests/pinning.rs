//! `--pin`: worker i runs on the i-th core this process may use. In a test binary
//! of its own, so no other test's worker threads (named alike) are around.

mod common;

use common::*;

/// The cores a thread of this process named `name` may run on, from /proc.
fn allowed_cores_of_thread(name: &str) -> Option<String> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        // A thread that ends while the list is read is skipped, not the end
        // of the search (it failed a loop run once).
        let Ok(task) = task else { continue };
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim() == name {
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string());
        }
    }
    None
}

#[test]
fn pin_puts_each_worker_on_its_own_core() {
    let cores = core_affinity::get_core_ids().expect("allowed cores");
    let origins = origins(1);
    let proxy = proxy_with(&[origins[0].local_addr()], |c| {
        c.workers = 2;
        c.pin = true;
    });
    assert_eq!(get(proxy.local_addrs()[0], "/").status, 200);
    for i in 0..2 {
        let expected = cores[i % cores.len()].id.to_string();
        let allowed = allowed_cores_of_thread(&format!("corelb-{i}")).expect("worker thread");
        assert_eq!(allowed, expected, "worker {i}");
    }
}
