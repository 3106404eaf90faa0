//! `nomad-driver-elide models list|prune [--dir DIR]`: the operator's view of the node's
//! model cache (docs/operator-guide.md). `prune` removes every model no live task uses
//! (or, with `--keep-mb N`, only the least recently used ones above N MiB) and the partial
//! files of downloads that were killed.

use super::store::Store;
use crate::config::DEFAULT_MODEL_CACHE_DIR;
use std::path::PathBuf;
use std::time::SystemTime;

const USAGE: &str = "usage: nomad-driver-elide models list [--dir DIR]
       nomad-driver-elide models prune [--dir DIR] [--keep-mb N]

The node's model cache (elide_opts { model {} }). DIR is the plugin's model_cache_dir
(default /var/lib/nomad-driver-elide/models). prune removes the models no task uses,
least recently used first (all of them, or down to N MiB), and killed downloads.";

/// Runs the subcommand (`args` after `models`); returns the exit code.
pub fn run(args: &[String]) -> i32 {
    match run_inner(args) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("nomad-driver-elide models: {e}");
            2
        }
    }
}

fn run_inner(args: &[String]) -> Result<String, String> {
    let mut dir = PathBuf::from(DEFAULT_MODEL_CACHE_DIR);
    let mut keep_mb: Option<u64> = None;
    let Some(cmd) = args.first() else {
        return Err(USAGE.into());
    };
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => {
                dir = PathBuf::from(it.next().ok_or("--dir needs a directory")?);
            }
            "--keep-mb" if cmd == "prune" => {
                let v = it.next().ok_or("--keep-mb needs a number of MiB")?;
                keep_mb = Some(
                    v.parse()
                        .map_err(|_| format!("--keep-mb {v:?} is not a number of MiB"))?,
                );
            }
            "-h" | "--help" => return Ok(format!("{USAGE}\n")),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if !dir.is_dir() {
        return Err(format!(
            "{} does not exist: no model was ever fetched with this model_cache_dir (pass --dir)",
            dir.display()
        ));
    }
    let store = Store::open(&dir).map_err(|e| e.to_string())?;
    match cmd.as_str() {
        "list" | "ls" => list(&store),
        "prune" => {
            let partials = store.prune_partials().map_err(|e| e.to_string())?;
            let removed = store
                .evict(keep_mb.unwrap_or(0).saturating_mul(1024 * 1024))
                .map_err(|e| e.to_string())?;
            let mut out = String::new();
            for r in &removed {
                out.push_str(&format!("removed sha256:{r}\n"));
            }
            out.push_str(&format!(
                "{} model(s) removed, {partials} partial download(s) removed\n",
                removed.len()
            ));
            Ok(out)
        }
        "-h" | "--help" | "help" => Ok(format!("{USAGE}\n")),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

fn list(store: &Store) -> Result<String, String> {
    let entries = store.list().map_err(|e| e.to_string())?;
    let mut out = format!(
        "{:<71} {:>12} {:>10} {:>5}\n",
        "DIGEST", "SIZE (MiB)", "IDLE (s)", "TASKS"
    );
    let mut total = 0;
    for e in &entries {
        total += e.size;
        let idle = SystemTime::now()
            .duration_since(e.last_used)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        out.push_str(&format!(
            "sha256:{:<64} {:>12.1} {:>10} {:>5}\n",
            e.sha256,
            e.size as f64 / 1048576.0,
            idle,
            e.users.len()
        ));
    }
    out.push_str(&format!(
        "{} model(s), {:.1} MiB in {}\n",
        entries.len(),
        total as f64 / 1048576.0,
        store.root().display()
    ));
    Ok(out)
}
