//! Reaching the repository: passwords (file, environment, prompt) and opening.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

use cairn::backend;
use cairn::{Error, Repository};

use crate::Cli;

fn read_password_file(path: &PathBuf) -> Result<Zeroizing<Vec<u8>>> {
    let text = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("reading password file {}", path.display()))?,
    );
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    Ok(Zeroizing::new(
        line.strip_suffix(b"\r").unwrap_or(line).to_vec(),
    ))
}

/// The password from --password-file / CAIRN_PASSWORD_FILE, CAIRN_PASSWORD, or a prompt.
pub fn password(cli: &Cli, confirm: bool) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(p) = &cli.password_file {
        return read_password_file(p);
    }
    if let Some(p) = std::env::var_os("CAIRN_PASSWORD") {
        return Ok(Zeroizing::new(p.into_encoded_bytes()));
    }
    prompt("repository password", confirm)
}

/// The password of a second repository (copy target, init source).
pub fn other_password(
    file: &Option<PathBuf>,
    var: &str,
    location: &str,
) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(p) = file {
        return read_password_file(p);
    }
    if let Some(p) = std::env::var_os(var) {
        return Ok(Zeroizing::new(p.into_encoded_bytes()));
    }
    prompt(&format!("password of {location}"), false)
}

/// A new password (`key add`, `key passwd`).
pub fn new_password(file: &Option<PathBuf>) -> Result<Zeroizing<Vec<u8>>> {
    if let Some(p) = file {
        return read_password_file(p);
    }
    if let Some(p) = std::env::var_os("CAIRN_NEW_PASSWORD") {
        return Ok(Zeroizing::new(p.into_encoded_bytes()));
    }
    prompt("new password", true)
}

fn prompt(what: &str, confirm: bool) -> Result<Zeroizing<Vec<u8>>> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::NoPassword.into());
    }
    let p = Zeroizing::new(rpassword::prompt_password(format!("enter {what}: "))?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password(format!("enter {what} again: "))?);
        if *again != *p {
            bail!("passwords do not match");
        }
    }
    if p.is_empty() {
        bail!("empty password");
    }
    Ok(Zeroizing::new(p.as_bytes().to_vec()))
}

/// The repository, opened with the password.
pub fn open_repo(cli: &Cli) -> Result<Repository> {
    let backend = backend::open(&cli.repo)?;
    let pw = password(cli, false)?;
    Ok(Repository::open(backend, &pw)?)
}

/// The repository without the local cache in front of it (`check`).
pub fn open_repo_uncached(cli: &Cli) -> Result<Repository> {
    let backend = backend::open_uncached(&cli.repo)?;
    let pw = password(cli, false)?;
    Ok(Repository::open(backend, &pw)?)
}
