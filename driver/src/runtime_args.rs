//! Words of Elide's command line that never reach `main`, wherever they stand.
//!
//! Elide is a GraalVM native image built with `-H:+ParseRuntimeOptions`. Before its `main`
//! runs, the image's runtime option parser walks *all* of argv — it has no notion of `--` —
//! and takes out `-XX:…`, `-Xmx/-Xms/-Xmn/-Xss<size>`, `-Djdk.graal.…`/`-Dgraal.…` and
//! `-D<name>=<value>`; an unknown `-XX:`/Graal option or a bad size ends the process
//! (`error: …`, exit 1). Elide's own `installStatics` then sets every remaining `-D<name>` word
//! as a system property, and Elide after 1.0.0-beta10 acts on `--use-version` anywhere.
//! Sources (GraalVM 25.0.0/25.0.1 `svm` sources, Elide 1.0.0-beta10 and main): docs/elide.md.

/// What the Elide process does with one command-line word before its `main` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeArg {
    /// `-XX:[+-]Name` / `-XX:Name=value`: a native-image VM option.
    VmOption,
    /// `-Xmx`, `-Xms`, `-Xmn`, `-Xss` followed by a size.
    Size(SizeOption),
    /// `-Djdk.graal.Name=value` / `-Dgraal.Name=value`: a Graal compiler option.
    GraalOption,
    /// `-D<name>=<value>`: a Java system property of Elide itself.
    SystemProperty,
    /// `-D<name>` (no `=`): reaches `main` on GraalVM 25.0, where Elide sets it as a property.
    BareProperty,
    /// `--use-version…`: Elide after 1.0.0-beta10 installs and re-executes that version.
    UseVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeOption {
    MaxHeap,
    InitialHeap,
    YoungGeneration,
    ThreadStack,
}

impl SizeOption {
    const ALL: [SizeOption; 4] = [
        SizeOption::MaxHeap,
        SizeOption::InitialHeap,
        SizeOption::YoungGeneration,
        SizeOption::ThreadStack,
    ];

    pub fn flag(self) -> &'static str {
        match self {
            SizeOption::MaxHeap => "-Xmx",
            SizeOption::InitialHeap => "-Xms",
            SizeOption::YoungGeneration => "-Xmn",
            SizeOption::ThreadStack => "-Xss",
        }
    }

    fn what(self) -> &'static str {
        match self {
            SizeOption::MaxHeap => {
                "the maximum heap size, overriding the heap the driver derives from the task's memory"
            }
            SizeOption::InitialHeap => "the initial heap size",
            SizeOption::YoungGeneration => "the young generation size",
            SizeOption::ThreadStack => "the thread stack size",
        }
    }
}

/// Classifies one argv word as the Elide native image would see it, anywhere on its command
/// line (`None`: it reaches Elide's option parser, or the guest after `--`, unchanged).
pub fn classify(arg: &str) -> Option<RuntimeArg> {
    if arg.starts_with("-XX:") {
        return Some(RuntimeArg::VmOption);
    }
    if let Some(size) = SizeOption::ALL
        .into_iter()
        .find(|s| arg.starts_with(s.flag()))
    {
        return Some(RuntimeArg::Size(size));
    }
    if arg.starts_with("-Djdk.graal.") || arg.starts_with("-Dgraal.") {
        return Some(RuntimeArg::GraalOption);
    }
    if let Some(prop) = arg.strip_prefix("-D") {
        return Some(if prop.contains('=') {
            RuntimeArg::SystemProperty
        } else {
            RuntimeArg::BareProperty
        });
    }
    if arg.starts_with("--use-version") {
        return Some(RuntimeArg::UseVersion);
    }
    None
}

impl RuntimeArg {
    /// Why such a word is not an ordinary argument (one clause, no trailing period).
    pub fn why(self) -> String {
        match self {
            RuntimeArg::VmOption => "GraalVM's runtime takes every -XX: word out of Elide's command line as a VM option, even after \"--\", and an unknown one aborts Elide".to_owned(),
            RuntimeArg::Size(s) => format!(
                "GraalVM's runtime takes every {}<size> word out of Elide's command line as {}, even after \"--\" (an invalid size aborts Elide)",
                s.flag(),
                s.what()
            ),
            RuntimeArg::GraalOption => "GraalVM's runtime takes every -Djdk.graal./-Dgraal. word out of Elide's command line as a compiler option, even after \"--\", and an unknown one aborts Elide".to_owned(),
            RuntimeArg::SystemProperty => "GraalVM's runtime takes every -D<name>=<value> word out of Elide's command line as a Java system property of Elide itself, even after \"--\"".to_owned(),
            RuntimeArg::BareProperty => "Elide sets every -D<name> word on its command line as a Java system property of its own (an empty or reserved name aborts it), and GraalVM releases after 25.0 take it out of the command line".to_owned(),
            RuntimeArg::UseVersion => "Elide releases after 1.0.0-beta10 take every --use-version word out of their command line, download that Elide version and run it instead".to_owned(),
        }
    }

    /// Whether the driver may pass this word as a runtime option (before the subcommand).
    pub fn is_runtime_option(self) -> bool {
        matches!(
            self,
            RuntimeArg::VmOption
                | RuntimeArg::Size(_)
                | RuntimeArg::GraalOption
                | RuntimeArg::SystemProperty
        )
    }
}

/// A size as GraalVM parses `-Xmx` & co.: digits with an optional k/m/g/t suffix.
pub fn is_valid_size(v: &str) -> bool {
    let digits = v
        .strip_suffix(['k', 'K', 'm', 'M', 'g', 'G', 't', 'T'])
        .unwrap_or(v);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `-XX:+Name`, `-XX:-Name` or `-XX:Name=value` (the value may be empty: `-XX:PrintFlags=`).
pub fn is_valid_vm_option(arg: &str) -> bool {
    let Some(rest) = arg.strip_prefix("-XX:") else {
        return false;
    };
    let name = match rest.strip_prefix(['+', '-']) {
        Some(n) => n,
        None => match rest.split_once('=') {
            Some((n, _)) => n,
            None => return false,
        },
    };
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_what_graalvm_and_elide_take_out_of_argv() {
        let cases: &[(&str, Option<RuntimeArg>)] = &[
            ("-XX:+PrintGC", Some(RuntimeArg::VmOption)),
            ("-XX:NoSuchOption=1", Some(RuntimeArg::VmOption)),
            ("-Xmx4g", Some(RuntimeArg::Size(SizeOption::MaxHeap))),
            ("-Xmxlots", Some(RuntimeArg::Size(SizeOption::MaxHeap))),
            ("-Xms16m", Some(RuntimeArg::Size(SizeOption::InitialHeap))),
            (
                "-Xmn8m",
                Some(RuntimeArg::Size(SizeOption::YoungGeneration)),
            ),
            ("-Xss4m", Some(RuntimeArg::Size(SizeOption::ThreadStack))),
            ("-Djdk.graal.Dump=", Some(RuntimeArg::GraalOption)),
            ("-Dgraal.Foo", Some(RuntimeArg::GraalOption)),
            ("-Dmode=fast", Some(RuntimeArg::SystemProperty)),
            ("-D=x", Some(RuntimeArg::SystemProperty)),
            ("-Dverbose", Some(RuntimeArg::BareProperty)),
            ("-D", Some(RuntimeArg::BareProperty)),
            ("--use-version=1.0.0", Some(RuntimeArg::UseVersion)),
            ("--use-version", Some(RuntimeArg::UseVersion)),
            // Not taken: they reach the guest after "--".
            ("-X", None),
            ("-Xint", None),
            ("-x", None),
            ("-d=1", None),
            ("--flag", None),
            ("two words", None),
            ("", None),
            ("--", None),
            ("-XX", None),
            ("--define=a=b", None),
            ("versions", None),
            ("--ignore-version", None),
        ];
        for (arg, want) in cases {
            assert_eq!(classify(arg), *want, "{arg:?}");
        }
    }

    #[test]
    fn reasons_name_the_shape_and_the_effect() {
        let heap = RuntimeArg::Size(SizeOption::MaxHeap).why();
        assert!(
            heap.contains("-Xmx<size>") && heap.contains("task's memory"),
            "{heap}"
        );
        assert!(RuntimeArg::VmOption.why().contains("aborts"));
        assert!(RuntimeArg::SystemProperty
            .why()
            .contains("even after \"--\""));
        assert!(RuntimeArg::UseVersion.why().contains("1.0.0-beta10"));
        assert!(!RuntimeArg::BareProperty.is_runtime_option());
        assert!(!RuntimeArg::UseVersion.is_runtime_option());
        assert!(RuntimeArg::GraalOption.is_runtime_option());
    }

    #[test]
    fn sizes_and_vm_option_shapes() {
        for ok in ["512m", "2g", "2G", "1024", "16k", "1t"] {
            assert!(is_valid_size(ok), "{ok}");
        }
        for bad in ["", "m", "lots", "1.5g", "-1m", "+1m", "1gb", " 1g"] {
            assert!(!is_valid_size(bad), "{bad}");
        }
        for ok in [
            "-XX:+PrintGC",
            "-XX:-UseX",
            "-XX:MaxDirectMemorySize=64m",
            "-XX:PrintFlags=",
            "-XX:A_1=x=y",
        ] {
            assert!(is_valid_vm_option(ok), "{ok}");
        }
        for bad in [
            "-XX:", "-XX:Name", "-XX:+", "-XX:1x=2", "-XX:+a-b", "-X:+A", "-XX:=1",
        ] {
            assert!(!is_valid_vm_option(bad), "{bad}");
        }
    }
}
