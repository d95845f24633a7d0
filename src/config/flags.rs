//! The flags of `corelb serve`, read through the settings table: `Serve` is an
//! argh subcommand whose flags, checks and `--help` (defaults included) all come
//! from `table`, so a setting is never described twice. Each value goes through
//! the same check as in the config file (`values`); a problem is one line that
//! names the flag and the value.

use std::path::PathBuf;
use std::time::Duration;

use argh::{CommandInfo, EarlyExit, FromArgs, SubCommand};

use super::table::{Settings, TABLE};

/// The flag that names the config file (not a setting: it says where the file
/// settings are).
pub const CONFIG_FLAG: &str = "--config";

/// What `corelb serve` was given.
#[derive(Debug, Default)]
pub struct Serve {
    /// The settings the flags set.
    pub settings: Settings,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
}

const DESCRIPTION: &str =
    "Balance HTTP/1.1 requests over backends (round-robin unless --algorithm).";

impl SubCommand for Serve {
    const COMMAND: &'static CommandInfo = &CommandInfo {
        name: "serve",
        short: &'\0',
        description: DESCRIPTION,
    };
}

fn refuse(message: String) -> EarlyExit {
    EarlyExit {
        output: message,
        status: Err(()),
    }
}

impl FromArgs for Serve {
    fn from_args(command_name: &[&str], args: &[&str]) -> Result<Self, EarlyExit> {
        let mut out = Serve::default();
        let mut args = args.iter();
        while let Some(&flag) = args.next() {
            if flag == "--help" || flag == "help" {
                return Err(EarlyExit {
                    output: help(command_name),
                    status: Ok(()),
                });
            }
            if flag == CONFIG_FLAG {
                let Some(&path) = args.next() else {
                    return Err(refuse(format!("{flag}: a file name is required")));
                };
                if out.config.replace(PathBuf::from(path)).is_some() {
                    return Err(refuse(format!("{flag}: given more than once")));
                }
                continue;
            }
            let Some(row) = TABLE.iter().find(|s| s.flag == flag) else {
                return Err(refuse(format!(
                    "unrecognized argument: {flag} (corelb serve --help lists the flags)"
                )));
            };
            let text = if row.switch() {
                ""
            } else {
                match args.next() {
                    Some(&text) => text,
                    None => return Err(refuse(format!("{flag}: a value is required"))),
                }
            };
            if let Some(Err(problem)) = out.settings.set_flag(flag, text) {
                return Err(refuse(if row.switch() {
                    format!("{flag}: {problem}")
                } else {
                    format!("{flag} {text}: {problem}")
                }));
            }
        }
        Ok(out)
    }
}

/// `corelb serve --help`: every flag from the table, with its default and its
/// config-file key.
pub fn help(command_name: &[&str]) -> String {
    let mut out = format!(
        "Usage: {} [--backend <host:port>]... [options]\n\n{DESCRIPTION}\n\nOptions:\n",
        command_name.join(" ")
    );
    let width = TABLE.iter().map(|s| s.flag.len()).max().unwrap_or(0) + 2;
    let mut line = |flag: &str, text: &str| {
        let mut col = String::new();
        let mut first = true;
        for word in text.split_whitespace() {
            if !col.is_empty() && col.len() + word.len() + 1 > 76 - width {
                out += &format!("  {:width$}{col}\n", if first { flag } else { "" });
                col.clear();
                first = false;
            }
            if !col.is_empty() {
                col.push(' ');
            }
            col += word;
        }
        out += &format!("  {:width$}{col}\n", if first { flag } else { "" });
    };
    for s in TABLE {
        let mut text = s.help.trim().to_string();
        if let Some(d) = (s.default)() {
            text += &format!(" (default {d})");
        }
        text += &format!(
            " [file: {}{}]",
            s.key,
            if s.restart { "; restart" } else { "" }
        );
        line(s.flag, &text);
    }
    line(
        CONFIG_FLAG,
        "read settings from this TOML file (flags given here override it); SIGHUP reads it \
         again and applies what a reload can (settings marked restart keep their value)",
    );
    line("--help", "display usage information");
    out
}

// How each kind of value is read from its flag; the check is the same one the
// file uses (`values`). A flag that is not a list may be given once.

fn once<T>(slot: &Option<T>) -> Result<(), String> {
    match slot {
        Some(_) => Err("given more than once".into()),
        None => Ok(()),
    }
}

pub(super) fn text<T>(
    slot: &mut Option<T>,
    text: &str,
    check: fn(&str) -> Result<T, String>,
) -> Result<(), String> {
    once(slot)?;
    *slot = Some(check(text)?);
    Ok(())
}

pub(super) fn int<T>(
    slot: &mut Option<T>,
    text: &str,
    check: fn(u64) -> Result<T, String>,
) -> Result<(), String> {
    once(slot)?;
    let n = text
        .parse::<u64>()
        .map_err(|_| "expected a whole number".to_string())?;
    *slot = Some(check(n)?);
    Ok(())
}

pub(super) fn duration(
    slot: &mut Option<Duration>,
    text: &str,
    check: fn(&str) -> Result<Duration, String>,
) -> Result<(), String> {
    self::text(slot, text, check)
}

pub(super) fn switch(
    slot: &mut Option<bool>,
    _text: &str,
    check: fn(bool) -> Result<bool, String>,
) -> Result<(), String> {
    once(slot)?;
    *slot = Some(check(true)?);
    Ok(())
}

/// A repeatable flag: each use adds one.
pub(super) fn list<T>(
    slot: &mut Option<Vec<T>>,
    text: &str,
    check: fn(&str) -> Result<T, String>,
) -> Result<(), String> {
    slot.get_or_insert_with(Vec::new).push(check(text)?);
    Ok(())
}

pub(super) fn backends<T>(
    slot: &mut Option<Vec<T>>,
    text: &str,
    check: fn(&str) -> Result<T, String>,
) -> Result<(), String> {
    list(slot, text, check)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Serve, String> {
        Serve::from_args(&["corelb", "serve"], args).map_err(|e| e.output)
    }

    #[test]
    fn flags_fill_settings_and_problems_name_the_flag_and_value() {
        let s = parse(&[
            "--backend",
            "127.0.0.1:1",
            "--backend",
            "127.0.0.1:2,weight=3",
            "--pin",
            "--connect-timeout",
            "500ms",
            "--workers",
            "3",
            "--config",
            "x.toml",
        ])
        .unwrap();
        assert_eq!(s.settings.backend.as_ref().map(Vec::len), Some(2));
        assert_eq!(s.settings.pin, Some(true));
        assert_eq!(s.settings.connect_timeout, Some(Duration::from_millis(500)));
        assert_eq!(s.settings.workers, Some(3));
        assert_eq!(s.config, Some(PathBuf::from("x.toml")));
        for (args, message) in [
            (&["--workers", "0"][..], "--workers 0: must be 1 to 1024"),
            (
                &["--workers", "x"][..],
                "--workers x: expected a whole number",
            ),
            (
                &["--workers", "1", "--workers", "2"][..],
                "--workers 2: given more than once",
            ),
            (&["--workers"][..], "--workers: a value is required"),
            (&["--wokers", "1"][..], "unrecognized argument: --wokers"),
            (
                &["--idle-timeout", "5"][..],
                "--idle-timeout 5: needs a unit",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.starts_with(message), "{args:?}: {e}");
        }
    }

    #[test]
    fn help_lists_every_setting_with_its_default_and_key() {
        let text = parse(&["--help"]).unwrap_err();
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for s in TABLE {
            assert!(text.contains(s.flag), "{} missing from:\n{text}", s.flag);
            assert!(words.contains(&format!("file: {}", s.key)), "{}", s.key);
        }
        assert!(words.contains("give up on a backend connection not established within this: try the next backend, or answer 502 (default 3s) [file: timeouts.connect]"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 80), "{text}");
    }
}
