//! `elide_opts { model { … } }`: a model file a task needs, named by its sha256 (the key of
//! the plugin's node-wide model cache, so one job can never hand another a different file
//! under the same key) and the plain file name the task sees it under
//! (`<task dir>/local/models/<name>`). Checked here; fetched by the plugin
//! (driver/src/models), bound read-only into the task by the shim. See docs/driver.md.

use serde::{Deserialize, Serialize};

/// Where the task sees its models, relative to the task dir.
pub const MODELS_TASK_DIR: &str = "local/models";
/// The environment variable naming that directory (absolute) for the app.
pub const MODELS_DIR_ENV: &str = "ELIDE_MODELS_DIR";
/// Hugging Face's endpoint, for the `repo`/`file` shorthand when the plugin's
/// `model_mirror` is empty.
pub const HUGGING_FACE: &str = "https://huggingface.co";
/// The most models one task may list.
pub const MAX_MODELS: usize = 32;

/// Where a model is downloaded from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelSource {
    /// An http(s) URL.
    Url(String),
    /// Hugging Face's `<endpoint>/<repo>/resolve/<revision>/<file>`.
    HuggingFace {
        repo: String,
        file: String,
        revision: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub source: ModelSource,
    /// Lower-case hex, 64 digits.
    pub sha256: String,
    /// A plain file name: the task sees the model at `local/models/<name>`.
    pub name: String,
}

impl ModelRef {
    /// The URL to download from; `mirror` (the plugin's `model_mirror`, empty = none)
    /// replaces Hugging Face's endpoint for the shorthand.
    pub fn url(&self, mirror: &str) -> String {
        match &self.source {
            ModelSource::Url(u) => u.clone(),
            ModelSource::HuggingFace {
                repo,
                file,
                revision,
            } => {
                let base = if mirror.is_empty() {
                    HUGGING_FACE
                } else {
                    mirror
                };
                format!(
                    "{}/{repo}/resolve/{revision}/{file}",
                    base.trim_end_matches('/')
                )
            }
        }
    }
}

/// Why a `model` block is refused; `field` names it (`config.elide_opts.model[0].sha256`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ModelRefError {
    pub field: String,
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> ModelRefError {
    ModelRefError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// The raw attributes of one `model` block, as the job wrote them.
#[derive(Debug, Clone, Default)]
pub struct RawModel {
    pub source: Option<String>,
    pub sha256: Option<String>,
    pub name: Option<String>,
    pub repo: Option<String>,
    pub file: Option<String>,
    pub revision: Option<String>,
}

/// A plain file name a task sees: `A-Z a-z 0-9 . _ -`, 1 to 128 bytes, not starting with `.`
/// or `-` (so never `.`/`..`, never hidden, never read as an option).
pub fn is_model_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A lower-case sha256 hex digest.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

fn hf_segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// An http(s) URL, without whitespace or control characters. The check is about what the
/// plugin can fetch; the URL itself is never echoed with its credentials ([`redact_url`]).
fn check_url(field: &str, u: &str) -> Result<(), ModelRefError> {
    let lower = u.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => {}
        _ => {
            return Err(err(
                field,
                format!("{:?} is not an http:// or https:// URL", redact_url(u)),
            ))
        }
    }
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(
            field,
            "contains whitespace or a control character; percent-encode it",
        ));
    }
    Ok(())
}

/// `u` without what may be a secret: user info (`user:token@`) and the query string (signed
/// URLs carry tokens there) become `***`.
pub fn redact_url(u: &str) -> String {
    let (scheme, rest) = match u.find("://") {
        Some(i) => (&u[..i + 3], &u[i + 3..]),
        None => ("", u),
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(host_end);
    let authority = match authority.rfind('@') {
        Some(i) => format!("***@{}", &authority[i + 1..]),
        None => authority.to_owned(),
    };
    let path = match path.find(['?', '#']) {
        Some(i) => format!("{}?***", &path[..i]),
        None => path.to_owned(),
    };
    format!("{scheme}{authority}{path}")
}

/// One `model` block → a [`ModelRef`]; `field` is its path for errors.
pub fn parse(field: &str, raw: RawModel) -> Result<ModelRef, ModelRefError> {
    let blank = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let sha256 = blank(raw.sha256).ok_or_else(|| {
        err(
            &format!("{field}.sha256"),
            "is required: the model's sha256 (64 hex digits) is its key in the node's model cache; compute it with `sha256sum FILE`",
        )
    })?;
    let sha256 = sha256
        .trim()
        .trim_start_matches("sha256:")
        .to_ascii_lowercase();
    if !is_sha256(&sha256) {
        return Err(err(
            &format!("{field}.sha256"),
            format!("{sha256:?} is not a sha256 digest (64 hex digits)"),
        ));
    }
    let (source, repo, file) = (blank(raw.source), blank(raw.repo), blank(raw.file));
    let revision = blank(raw.revision);
    let source = match (source, repo, file) {
        (Some(u), None, None) if revision.is_none() => {
            check_url(&format!("{field}.source"), &u)?;
            ModelSource::Url(u)
        }
        (None, Some(repo), Some(file)) => {
            let parts: Vec<&str> = repo.split('/').collect();
            if parts.len() != 2 || !parts.iter().all(|p| hf_segment_ok(p)) {
                return Err(err(
                    &format!("{field}.repo"),
                    format!("{repo:?} is not a Hugging Face repo id (\"owner/name\")"),
                ));
            }
            if !file.split('/').all(hf_segment_ok) {
                return Err(err(
                    &format!("{field}.file"),
                    format!("{file:?} is not a file path in the repo (\"model.gguf\", \"dir/model.gguf\")"),
                ));
            }
            let revision = revision.unwrap_or_else(|| "main".to_owned());
            if !hf_segment_ok(&revision) {
                return Err(err(
                    &format!("{field}.revision"),
                    format!("{revision:?} is not a branch, tag or commit name"),
                ));
            }
            ModelSource::HuggingFace {
                repo,
                file,
                revision,
            }
        }
        _ => {
            return Err(err(
                field,
                "needs either source (a URL) or repo and file (Hugging Face, with an optional revision), not both",
            ))
        }
    };
    let name = match blank(raw.name) {
        Some(n) => n,
        // The shorthand's file name is a sensible default.
        None => match &source {
            ModelSource::HuggingFace { file, .. } => {
                file.rsplit('/').next().unwrap_or_default().to_owned()
            }
            ModelSource::Url(_) => return Err(err(
                &format!("{field}.name"),
                "is required: the file name the task sees the model under (local/models/<name>)",
            )),
        },
    };
    if !is_model_name(&name) {
        return Err(err(
            &format!("{field}.name"),
            format!("{name:?} must be a plain file name (letters, digits, '.', '_', '-'; not starting with '.' or '-'), e.g. \"tinyllama.gguf\""),
        ));
    }
    Ok(ModelRef {
        source,
        sha256,
        name,
    })
}

/// Checks a task's list as a whole: at most [`MAX_MODELS`], names unique.
pub fn check_list(field: &str, models: &[ModelRef]) -> Result<(), ModelRefError> {
    if models.len() > MAX_MODELS {
        return Err(err(
            field,
            format!(
                "{} models; a task may list at most {MAX_MODELS}",
                models.len()
            ),
        ));
    }
    for (i, m) in models.iter().enumerate() {
        if models[..i].iter().any(|o| o.name == m.name) {
            return Err(err(
                &format!("{field}[{i}].name"),
                format!("{:?} is used by two models; give each its own name", m.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn raw(source: &str, sha: &str, name: &str) -> RawModel {
        RawModel {
            source: Some(source.into()),
            sha256: Some(sha.into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_url_model_parses_and_its_digest_is_normalised() {
        let m = parse(
            "m",
            raw(
                "https://h/x.gguf",
                &format!("sha256:{}", D.to_uppercase()),
                "x.gguf",
            ),
        )
        .unwrap();
        assert_eq!(m.sha256, D);
        assert_eq!(m.url(""), "https://h/x.gguf");
        assert_eq!(m.url("http://mirror"), "https://h/x.gguf");
    }

    #[test]
    fn the_hugging_face_shorthand_resolves_to_the_endpoint_or_the_mirror() {
        let m = parse(
            "m",
            RawModel {
                sha256: Some(D.into()),
                repo: Some("TheBloke/TinyLlama-GGUF".into()),
                file: Some("tinyllama.Q4_K_M.gguf".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(m.name, "tinyllama.Q4_K_M.gguf");
        assert_eq!(
            m.url(""),
            "https://huggingface.co/TheBloke/TinyLlama-GGUF/resolve/main/tinyllama.Q4_K_M.gguf"
        );
        assert_eq!(
            m.url("http://mirror.internal/hf/"),
            "http://mirror.internal/hf/TheBloke/TinyLlama-GGUF/resolve/main/tinyllama.Q4_K_M.gguf"
        );
    }

    #[test]
    fn bad_models_are_refused_naming_the_field() {
        let cases = [
            (raw("https://h/x", "abc", "x"), "m.sha256"),
            (raw("https://h/x", "", "x"), "m.sha256"),
            (raw("ftp://h/x", D, "x"), "m.source"),
            (raw("https:///x", D, "x"), "m.source"),
            (raw("https://h/a b", D, "x"), "m.source"),
            (raw("https://h/x", D, "../x"), "m.name"),
            (raw("https://h/x", D, "a/b"), "m.name"),
            (raw("https://h/x", D, ".hidden"), "m.name"),
            (raw("https://h/x", D, ""), "m.name"),
            (
                RawModel {
                    sha256: Some(D.into()),
                    repo: Some("../etc".into()),
                    file: Some("x".into()),
                    ..Default::default()
                },
                "m.repo",
            ),
            (
                RawModel {
                    sha256: Some(D.into()),
                    repo: Some("a/b".into()),
                    file: Some("../x".into()),
                    ..Default::default()
                },
                "m.file",
            ),
            (
                RawModel {
                    source: Some("https://h/x".into()),
                    sha256: Some(D.into()),
                    repo: Some("a/b".into()),
                    file: Some("x".into()),
                    ..Default::default()
                },
                "m",
            ),
        ];
        for (r, field) in cases {
            let e = parse("m", r.clone()).unwrap_err();
            assert_eq!(e.field, field, "{r:?}: {e}");
        }
    }

    #[test]
    fn urls_are_redacted_of_credentials_and_queries() {
        assert_eq!(
            redact_url("https://user:tok@h.example/a/b?sig=SECRET#f"),
            "https://***@h.example/a/b?***"
        );
        assert_eq!(redact_url("http://h:8080/x"), "http://h:8080/x");
        let e = parse("m", raw("ftp://u:SECRET@h/x", D, "x")).unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }

    #[test]
    fn names_must_be_unique_within_a_task() {
        let a = parse("m", raw("https://h/a", D, "x")).unwrap();
        let e = check_list("models", &[a.clone(), a]).unwrap_err();
        assert_eq!(e.field, "models[1].name");
    }
}
