//! The fetcher against a local HTTP server (no internet): one download for concurrent
//! starts, a wrong digest leaves nothing, an unreachable source names the redacted URL.

use super::*;
use crate::model_ref::{ModelSource, RawModel};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A tiny HTTP/1.0 server of one body; counts the GETs it answered.
struct Server {
    url: String,
    gets: Arc<AtomicUsize>,
}

/// Reads a request's head (up to the blank line); the tests' servers ignore what it asks.
fn read_request(s: &std::net::TcpStream) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
}

fn serve(body: Vec<u8>) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/m.gguf", l.local_addr().unwrap());
    let gets = Arc::new(AtomicUsize::new(0));
    let g = gets.clone();
    let body = Arc::new(body);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let (g, body) = (g.clone(), body.clone());
            std::thread::spawn(move || {
                read_request(&s);
                g.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            });
        }
    });
    Server { url, gets }
}

/// The test servers listen on 127.0.0.1, which the plugin trusts only when listed.
fn local() -> egress::EgressPolicy {
    egress::EgressPolicy::from_config(&["127.0.0.1".to_owned()], "")
}

/// A server whose every answer is a redirect to `location`; counts the GETs.
fn serve_redirect(location: String) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/m.gguf", l.local_addr().unwrap());
    let gets = Arc::new(AtomicUsize::new(0));
    let g = gets.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            read_request(&s);
            g.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                s,
                "HTTP/1.0 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
            );
        }
    });
    Server { url, gets }
}

fn hex(d: &[u8]) -> String {
    Sha256::digest(d)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn model(url: &str, sha: &str, name: &str) -> ModelRef {
    crate::model_ref::parse(
        "m",
        RawModel {
            source: Some(url.into()),
            sha256: Some(sha.into()),
            name: Some(name.into()),
            ..Default::default()
        },
    )
    .unwrap()
}

fn body() -> Vec<u8> {
    (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_share_one_download_and_one_file() {
    let data = body();
    let sha = hex(&data);
    let srv = serve(data.clone());
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let models = Arc::new(Models::default());
    let mut joins = Vec::new();
    for i in 0..8 {
        let (models, cache, m) = (
            models.clone(),
            cache.clone(),
            model(&srv.url, &sha, "x.gguf"),
        );
        let task_dir = t.path().join(format!("task{i}"));
        std::fs::create_dir(&task_dir).unwrap();
        joins.push(tokio::spawn(async move {
            models
                .prepare(
                    &cache,
                    1024,
                    "",
                    &local(),
                    &format!("a/t/{i}"),
                    &task_dir,
                    &[m],
                    &|_| {},
                )
                .await
                .unwrap()
        }));
    }
    for j in joins {
        let p = j.await.unwrap();
        assert_eq!(p[0].blob, blob_path(&cache, &sha));
        assert_eq!(p[0].task_path, "local/models/x.gguf");
    }
    assert_eq!(srv.gets.load(Ordering::SeqCst), 1, "exactly one download");
    assert_eq!(std::fs::read(blob_path(&cache, &sha)).unwrap(), data);
    assert_eq!(std::fs::read_dir(cache.join("blobs")).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(cache.join("partial")).unwrap().count(), 0);
    let s = Store::open(&cache).unwrap();
    assert_eq!(s.users(&sha).len(), 8);
    // A released task no longer holds it.
    models.release(&cache, "a/t/0").await;
    assert_eq!(s.users(&sha).len(), 7);
}

#[tokio::test]
async fn a_wrong_digest_fails_naming_both_and_leaves_nothing() {
    let data = body();
    let wrong = hex(b"something else");
    let srv = serve(data.clone());
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let events = Mutex::new(Vec::new());
    let e = Models::default()
        .prepare(
            &cache,
            1024,
            "",
            &local(),
            "a/t/1",
            t.path(),
            &[model(&srv.url, &wrong, "x.gguf")],
            &|m| events.lock().unwrap().push(m),
        )
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&wrong) && msg.contains(&hex(&data)), "{msg}");
    assert!(msg.contains(&srv.url), "{msg}");
    assert!(!e.is_recoverable());
    assert_eq!(std::fs::read_dir(cache.join("blobs")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(cache.join("partial")).unwrap().count(), 0);
    assert!(
        Store::open(&cache).unwrap().users(&wrong).is_empty(),
        "ref dropped"
    );
    assert!(events.lock().unwrap()[0].starts_with("Downloading model x.gguf"));
}

#[tokio::test]
async fn an_unreachable_source_is_recoverable_and_never_shows_credentials() {
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://user:SECRET@127.0.0.1:{port}/m.gguf?token=SECRET2");
    let t = tempfile::tempdir().unwrap();
    let e = Models::default()
        .prepare(
            &t.path().join("c"),
            1024,
            "",
            &local(),
            "a/t/1",
            t.path(),
            &[model(&url, &hex(b"x"), "x.gguf")],
            &|_| {},
        )
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(e.is_recoverable(), "{msg}");
    assert!(!msg.contains("SECRET"), "{msg}");
    assert!(
        msg.contains(&format!("http://***@127.0.0.1:{port}/m.gguf?***")),
        "{msg}"
    );
}

#[tokio::test]
async fn a_cached_model_is_not_downloaded_again_and_the_mirror_serves_the_shorthand() {
    let data = body();
    let sha = hex(&data);
    let srv = serve(data);
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("c");
    let mirror = srv.url.trim_end_matches("/m.gguf").to_owned();
    let hf = ModelRef {
        source: ModelSource::HuggingFace {
            repo: "o/r".into(),
            file: "m.gguf".into(),
            revision: "main".into(),
        },
        sha256: sha.clone(),
        name: "m.gguf".into(),
    };
    let m = Models::default();
    for i in 0..3 {
        m.prepare(
            &cache,
            1024,
            &mirror,
            // Trusted only as the operator's mirror (not listed in model_internal_hosts).
            &egress::EgressPolicy::from_config(&[], &mirror),
            &format!("a/t/{i}"),
            t.path(),
            std::slice::from_ref(&hf),
            &|_| {},
        )
        .await
        .unwrap();
    }
    assert_eq!(srv.gets.load(Ordering::SeqCst), 1);
}

async fn refusal(policy: &egress::EgressPolicy, url: &str) -> ModelsError {
    let t = tempfile::tempdir().unwrap();
    Models::default()
        .prepare(
            &t.path().join("c"),
            1024,
            "",
            policy,
            "a/t/1",
            t.path(),
            &[model(url, &hex(b"x"), "x.gguf")],
            &|_| {},
        )
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_job_cannot_make_the_plugin_fetch_from_an_internal_address() {
    let srv = serve(body());
    // By IP literal: refused before any connection.
    let e = refusal(&egress::EgressPolicy::default(), &srv.url).await;
    let msg = e.to_string();
    assert!(
        matches!(e, ModelsError::Fetch(FetchError::Refused { .. })),
        "{msg}"
    );
    assert!(!e.is_recoverable(), "{msg}");
    assert!(
        msg.contains("127.0.0.1 is a loopback address") && msg.contains("model_internal_hosts"),
        "{msg}"
    );
    // By a name that resolves to it: refused by the resolver.
    let by_name = srv.url.replace("127.0.0.1", "localhost");
    let e = refusal(&egress::EgressPolicy::default(), &by_name).await;
    assert!(
        matches!(e, ModelsError::Fetch(FetchError::Refused { .. })),
        "{e}"
    );
    // The cloud metadata endpoint.
    let e = refusal(
        &egress::EgressPolicy::default(),
        "http://169.254.169.254/latest/meta-data/",
    )
    .await;
    assert!(e.to_string().contains("link-local (cloud metadata)"), "{e}");
    assert_eq!(
        srv.gets.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );
}

#[tokio::test]
async fn a_trusted_source_cannot_redirect_the_plugin_to_an_internal_address() {
    let target = serve(body());
    // A literal the operator did not list, and a name resolving to a listed address.
    for location in [
        "http://10.255.255.1/m.gguf".to_owned(),
        target.url.replace("127.0.0.1", "localhost"),
    ] {
        let redirect = serve_redirect(location.clone());
        let e = refusal(&local(), &redirect.url).await;
        assert!(
            matches!(e, ModelsError::Fetch(FetchError::Refused { .. })),
            "{location}: {e}"
        );
        assert_eq!(redirect.gets.load(Ordering::SeqCst), 1, "{location}");
    }
    assert_eq!(
        target.gets.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
}
