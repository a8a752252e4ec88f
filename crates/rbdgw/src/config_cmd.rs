//! `rbdgw config …`: the shared config — kept in Ceph as lrbd kept it (what `lrbd -f`, `-o`
//! and `-W` did), checked before it is stored, and compared with what is stored.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use gateway::config::store::{self, ConfigSource};
use gateway::config::Config;
use gateway::target::CephOptions;

use crate::blocking;

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Validate a config file, then replace the stored config with it; running gateways
    /// apply it.
    Store {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Store even if LUNs of the stored config get other numbers (running gateways
        /// refuse such a change: stop them first).
        #[arg(long)]
        renumber: bool,
    },
    /// Print the stored config.
    Show,
    /// Remove the stored config.
    Wipe,
    /// Validate a config file and say what it describes; nothing is stored. Exit status 0
    /// when it is valid, 1 when not (for scripts and configuration management).
    Check {
        file: PathBuf,
        /// Also fail on warnings (keys accepted but without effect here).
        #[arg(long)]
        strict: bool,
    },
    /// What storing FILE would change on each gateway host: a diff of each host's plan
    /// against the config at `--at` (a rados:// location or a file). Exit status 0 when
    /// nothing changes, 1 when something does, 2 on an error.
    Diff {
        #[arg(short = 'f', long)]
        file: PathBuf,
    },
    /// Read the config an lrbd deployment stored (xattrs of `lrbd.conf` in each pool) and
    /// print it as one document, or store it with --store.
    ImportLrbd {
        /// Pools to read (default: every pool).
        #[arg(long)]
        pool: Vec<String>,
        /// Validate and store the result at `--at` instead of printing it.
        #[arg(long)]
        store: bool,
    },
}

/// What a config command tells the shell, beyond success or an error (exit status 2 for
/// `diff`, as diff(1) does, 1 elsewhere).
pub enum Outcome {
    Done,
    /// `check` found the file invalid (already reported), or `diff` found changes.
    Negative,
}

fn rados_location(at: &ConfigSource) -> anyhow::Result<(String, String)> {
    match at {
        ConfigSource::Rados { pool, object } => Ok((pool.clone(), object.clone())),
        ConfigSource::File(p) => anyhow::bail!(
            "--at {}: this command works on a rados:// location",
            p.display()
        ),
    }
}

fn read_file(file: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

pub async fn run(
    at: ConfigSource,
    ceph: CephOptions,
    action: ConfigAction,
) -> anyhow::Result<Outcome> {
    match action {
        ConfigAction::Check { file, strict } => {
            let name = file.display().to_string();
            let cfg = match Config::parse(&name, &read_file(&file)?) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(Outcome::Negative);
                }
            };
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            let luns: usize = cfg.targets.iter().map(|t| t.luns.len()).sum();
            println!(
                "{name}: valid: {} targets, {luns} LUNs, hosts: {}",
                cfg.targets.len(),
                cfg.hosts().join(", ")
            );
            if strict && !cfg.warnings.is_empty() {
                return Ok(Outcome::Negative);
            }
        }
        ConfigAction::Diff { file } => {
            let new = Config::parse(&file.display().to_string(), &read_file(&file)?)?;
            let (src, c) = (at.clone(), ceph.clone());
            let (old, _) = blocking(move || src.load(&c)).await?;
            if let Some(why) = new.renumbers(&old) {
                println!("`config store` would refuse it: {why}\n");
            }
            let mut changed = false;
            for (host, d) in gateway::plan::diff(&old, &new) {
                if d.is_empty() {
                    println!("{host}: unchanged");
                } else {
                    changed = true;
                    print!("{d}");
                }
            }
            if changed {
                return Ok(Outcome::Negative);
            }
        }
        ConfigAction::Store { file, renumber } => {
            let (pool, object) = rados_location(&at)?;
            let text = read_file(&file)?;
            let cfg =
                blocking(move || store::store(&ceph, &pool, &object, &text, renumber)).await?;
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "stored {} ({} targets, hosts: {})",
                at.name(),
                cfg.targets.len(),
                cfg.hosts().join(", ")
            );
        }
        ConfigAction::Show => {
            let src = at.clone();
            print!("{}", blocking(move || src.fetch(&ceph)).await?);
        }
        ConfigAction::Wipe => {
            let (pool, object) = rados_location(&at)?;
            if blocking(move || store::wipe(&ceph, &pool, &object)).await? {
                println!("removed {}", at.name());
            } else {
                println!("{} did not exist", at.name());
            }
        }
        ConfigAction::ImportLrbd { pool: pools, store } => {
            let (pool, object) = rados_location(&at)?;
            let c = ceph.clone();
            let doc = blocking(move || store::import_lrbd(&c, &pools)).await?;
            let text = serde_json::to_string_pretty(&doc)?;
            if store {
                let t = text.clone();
                blocking(move || store::store(&ceph, &pool, &object, &t, false)).await?;
                println!("imported lrbd's config into {}", at.name());
            } else {
                println!("{text}");
            }
        }
    }
    Ok(Outcome::Done)
}
