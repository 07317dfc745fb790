//! Heroku's Procfile: one `type: command` per line; `web` gets HTTP on `$PORT`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names::ProcessType;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Procfile {
    pub processes: BTreeMap<ProcessType, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcfileError {
    #[error(
        "the archive has no Procfile at its root; add a file named `Procfile` with a line like `web: python3 app.py`"
    )]
    Missing,
    #[error("Procfile line {line}: {why}")]
    Line { line: usize, why: String },
    #[error(
        "the Procfile has no `web` process type; add a line like `web: python3 app.py` (the command must listen on $PORT)"
    )]
    NoWeb,
    #[error("the Procfile is not UTF-8 text")]
    NotText,
}

impl Procfile {
    /// Parses a Procfile. Blank lines and lines starting with `#` are skipped; every other line
    /// must be `type: command` with a valid, unique type and a non-empty command.
    pub fn parse(text: &str) -> Result<Procfile, ProcfileError> {
        let mut processes = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let err = |why: String| ProcfileError::Line { line, why };
            let Some((name, command)) = trimmed.split_once(':') else {
                return Err(err(format!("expected `type: command`, got {trimmed:?}")));
            };
            let kind = ProcessType::parse(name.trim()).map_err(|e| err(e.to_string()))?;
            let command = command.trim();
            if command.is_empty() {
                return Err(err(format!("process type `{kind}` has no command")));
            }
            if processes
                .insert(kind.clone(), command.to_string())
                .is_some()
            {
                return Err(err(format!("process type `{kind}` is defined twice")));
            }
        }
        if !processes.contains_key(&ProcessType::web()) {
            return Err(ProcfileError::NoWeb);
        }
        Ok(Procfile { processes })
    }

    pub fn parse_bytes(bytes: &[u8]) -> Result<Procfile, ProcfileError> {
        Procfile::parse(std::str::from_utf8(bytes).map_err(|_| ProcfileError::NotText)?)
    }

    pub fn command(&self, kind: &ProcessType) -> Option<&str> {
        self.processes.get(kind).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expect: Result<&[(&str, &str)], &str>) {
        match (Procfile::parse(text), expect) {
            (Ok(p), Ok(want)) => {
                let got: Vec<(&str, &str)> = p
                    .processes
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert_eq!(got, want);
            }
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{e}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_heroku_procfiles() {
        check("web: python3 app.py\n", Ok(&[("web", "python3 app.py")]));
        check(
            "# comment\n\nweb:   bin/server --port $PORT  \r\nworker: bin/jobs\nrelease: bin/migrate\n",
            Ok(&[
                ("release", "bin/migrate"),
                ("web", "bin/server --port $PORT"),
                ("worker", "bin/jobs"),
            ]),
        );
        check("web: sh -c 'a: b'", Ok(&[("web", "sh -c 'a: b'")]));
    }

    #[test]
    fn rejects_bad_procfiles() {
        check("", Err("no `web` process type"));
        check("worker: x", Err("no `web` process type"));
        check("web python app.py", Err("line 1: expected `type: command`"));
        check("web:\n", Err("line 1: process type `web` has no command"));
        check(
            "web: a\nweb: b",
            Err("line 2: process type `web` is defined twice"),
        );
        check("my web: a", Err("line 1: invalid process type"));
        assert_eq!(
            Procfile::parse_bytes(&[0xff, 0xfe]),
            Err(ProcfileError::NotText)
        );
    }
}
