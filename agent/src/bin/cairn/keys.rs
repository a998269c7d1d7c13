//! `cairn init` and `cairn key ...`: creating a repository and managing its keys.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use cairn::backend;
use cairn::Repository;

use crate::access::{new_password, open_repo, other_password, password};
use crate::args::{kdf_cost, InitArgs, KeyCommand};
use crate::output::print_json;
use crate::Cli;

/// `cairn init`.
pub fn init(cli: &Cli, args: &InitArgs) -> Result<ExitCode> {
    let from = match &args.from_repo {
        Some(loc) => {
            let pw = other_password(&args.from_password_file, "CAIRN_FROM_PASSWORD", loc)?;
            Some(Repository::open(backend::open(loc)?, &pw)?)
        }
        None => None,
    };
    let backend = if args.group_access {
        backend::open_group_shared(&cli.repo)?
    } else {
        backend::open(&cli.repo)?
    };
    let pw = password(cli, true)?;
    let repo = Repository::init_from(backend, &pw, kdf_cost(&args.kdf), from.as_ref())?;
    if cli.json {
        print_json(&json!({"id": repo.config().id, "location": repo.backend().location()}))?;
    } else {
        println!(
            "created repository {} at {}",
            repo.config().id.short(),
            repo.backend().location()
        );
        println!("keep the password safe: without it the data cannot be recovered");
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn key list|add|remove|passwd`.
pub fn key(cli: &Cli, command: &KeyCommand) -> Result<ExitCode> {
    let mut repo = open_repo(cli)?;
    match command {
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if cli.json {
                print_json(&keys)?;
            } else {
                println!(" {:<8}  {:<12}  {:<16}  Created", "ID", "User", "Host");
                for k in keys {
                    println!(
                        "{}{:<8}  {:<12}  {:<16}  {}",
                        if k.current { "*" } else { " " },
                        &k.id[..8.min(k.id.len())],
                        k.username,
                        k.hostname,
                        k.created.format("%Y-%m-%d %H:%M:%S")
                    );
                }
            }
        }
        KeyCommand::Add {
            new_password_file,
            kdf,
        } => {
            let pw = new_password(new_password_file)?;
            let name = repo.add_key(&pw, kdf_cost(kdf))?;
            if cli.json {
                print_json(&json!({"id": name}))?;
            } else {
                println!("added key {}", &name[..8]);
            }
        }
        KeyCommand::Remove { id } => {
            let name = repo.resolve_key(id)?;
            repo.remove_key(&name)?;
            if !cli.json {
                println!("removed key {}", &name[..8.min(name.len())]);
            } else {
                print_json(&json!({"removed": name}))?;
            }
        }
        KeyCommand::Passwd {
            new_password_file,
            kdf,
        } => {
            let pw = new_password(new_password_file)?;
            let name = repo.change_password(&pw, kdf_cost(kdf))?;
            if cli.json {
                print_json(&json!({"id": name}))?;
            } else {
                println!("password changed (new key {})", &name[..8]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
