//! Shim footprint: spawn → READY and spawn → first answered RPC, and per-shim memory with N
//! tasks running, in the default setup: the shim writes each task's log files (the task
//! prints a line, then sleeps). `cargo bench -p elide-executor --bench footprint [-- N]`
//! (release build; `-- N fifo` for a spec without log files, as with `log_collection =
//! "nomad"`; `ELIDE_EXECUTOR_BIN=PATH` measures that binary, e.g. the static one
//! `scripts/build-release` makes). Prints figures; asserts nothing (CI machines vary).

#[path = "../tests/support/mod.rs"]
mod support;

use common::proto::executor as api;
use std::time::{Duration, Instant};
use support::*;

fn kb(pid: i32, file: &str, keys: &[&str]) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(k)))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = v[v.len() / 2];
    format!(
        "median {med:.2}, min {:.2}, max {:.2}",
        v[0],
        v[v.len() - 1]
    )
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let log_files = !std::env::args().any(|a| a == "fifo");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = short_dir();
        let mut ready_ms = Vec::new();
        let mut rpc_ms = Vec::new();
        let mut cpu_ms = Vec::new();
        let mut shims = Vec::new();
        for _ in 0..n {
            let mut s = spec(dir.path(), "echo started; exec sleep 100000");
            if log_files {
                let logs = dir.path().join(&s.task_name).join("logs");
                std::fs::create_dir_all(&logs).unwrap();
                s.log_files = Some(common::spec::LogFilesSpec {
                    dir: logs,
                    stdout_name: "t.stdout".into(),
                    stderr_name: "t.stderr".into(),
                    max_files: 10,
                    max_file_size_mb: 10,
                });
            }
            let p = write_spec(&s, dir.path());
            let t0 = Instant::now();
            let (child, line) = launch_raw(&p, None);
            let t_ready = t0.elapsed();
            assert_eq!(line, "READY\n");
            // CPU time the shim used until READY (it then idles): independent of load.
            let cpu_ns: f64 = std::fs::read_to_string(format!("/proc/{}/schedstat", child.id()))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0.0);
            cpu_ms.push(cpu_ns / 1e6);
            let mut c = common::client::connect(&s.socket_path).await.unwrap();
            c.status(api::StatusRequest {}).await.unwrap();
            let t_rpc = t0.elapsed();
            ready_ms.push(t_ready.as_secs_f64() * 1000.0);
            rpc_ms.push(t_rpc.as_secs_f64() * 1000.0);
            shims.push((Shim::of(s, &p, child, line), c));
        }
        let idle: Vec<f64> = shims
            .iter()
            .map(|(s, _)| kb(s.pid(), "status", &["VmRSS:"]) as f64)
            .collect();
        for (_, c) in shims.iter_mut() {
            c.start(api::StartRequest {}).await.unwrap();
        }
        // One Stats sample each, so the stats path is part of the resident set.
        for (_, c) in shims.iter_mut() {
            let mut st = c
                .stats(api::StatsRequest { interval_ms: 1000 })
                .await
                .unwrap()
                .into_inner();
            st.message().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pids: Vec<i32> = shims.iter().map(|(s, _)| s.pid()).collect();
        let rss: Vec<f64> = pids
            .iter()
            .map(|p| kb(*p, "status", &["VmRSS:"]) as f64)
            .collect();
        let pss: Vec<f64> = pids
            .iter()
            .map(|p| kb(*p, "smaps_rollup", &["Pss:"]) as f64)
            .collect();
        let private: Vec<f64> = pids
            .iter()
            .map(|p| kb(*p, "smaps_rollup", &["Private_Clean:", "Private_Dirty:"]) as f64)
            .collect();
        let threads: Vec<f64> = pids
            .iter()
            .map(|p| kb(*p, "status", &["Threads:"]) as f64)
            .collect();
        println!(
            "elide-executor footprint, {n} shims, {} (binary {}, {} bytes)",
            if log_files {
                "the shim writes the log files"
            } else {
                "no log files (/dev/null)"
            },
            bin(),
            std::fs::metadata(bin()).map(|m| m.len()).unwrap_or(0)
        );
        println!(
            "spawn -> READY on the ready fd (ms):     {}",
            stats(ready_ms)
        );
        println!("spawn -> first Status answered (ms):     {}", stats(rpc_ms));
        println!("shim CPU time until READY (ms):          {}", stats(cpu_ms));
        println!("VmRSS idle, before Start (kB):           {}", stats(idle));
        println!("VmRSS with its task running (kB):        {}", stats(rss));
        println!("Pss with {n} shims running (kB):          {}", stats(pss));
        println!(
            "Private (clean+dirty) (kB):              {}",
            stats(private)
        );
        println!(
            "threads per shim:                        {}",
            stats(threads)
        );
        for (_, c) in shims.iter_mut() {
            let _ = c.shutdown(api::ShutdownRequest {}).await;
        }
        for (mut s, _) in shims {
            s.exited().await;
        }
    });
}
