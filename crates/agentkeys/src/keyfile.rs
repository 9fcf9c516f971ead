//! Wallet key files: one line, `0x` + 64 hex digits of a secp256k1 secret, mode 0600.

use std::path::Path;

use agentkeys_types::WalletAddress;
pub use agentkeys_wallet::WalletKey;

use crate::error::{Error, Result};
use crate::fsutil;

/// Generates a new key and writes it to `path` (mode 0600). Refuses to replace an existing
/// file unless `force`. Returns the signer of the new key.
pub fn generate(path: &Path, force: bool) -> Result<WalletKey> {
    let signer = WalletKey::random();
    let contents = format!("0x{}\n", hex::encode(signer.to_bytes()));
    if force {
        fsutil::write_private_atomic(path, contents.as_bytes())?;
    } else {
        fsutil::write_new_private(path, contents.as_bytes()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::KeyFileExists {
                    path: path.to_path_buf(),
                }
            } else {
                Error::io("create key file", path, e)
            }
        })?;
    }
    Ok(signer)
}

/// Reads a key file. Refuses a file that group or others may read, and never echoes its content.
pub fn read(path: &Path) -> Result<WalletKey> {
    let bytes = fsutil::read_private(path)?.ok_or_else(|| {
        Error::InvalidInput(format!(
            "key file {} does not exist; create one with `agentkeys key generate --out {}`",
            path.display(),
            path.display()
        ))
    })?;
    parse(path, &bytes)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<WalletKey> {
    let invalid = |reason: &str| Error::InvalidKeyFile {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| invalid("it is not text"))?
        .trim();
    let hex_part = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid("expected one line of 0x followed by 64 hex digits"));
    }
    let mut secret = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut secret).map_err(|_| invalid("bad hex"))?;
    let signer = WalletKey::from_slice(&secret)
        .map_err(|_| invalid("the value is not a valid secp256k1 secret key (zero or too large)"));
    secret.fill(0);
    signer
}

/// The canonical (lowercase) address of a signer.
pub fn address_of(signer: &WalletKey) -> WalletAddress {
    // Formatting an `Address` as lower hex always yields `0x` + 40 hex digits, which parses.
    let s = format!("{:#x}", signer.address());
    s.parse()
        .unwrap_or_else(|_| unreachable!("alloy address formats as 0x + 40 hex: {s}"))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generate_writes_0600_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("wallet.key");
        let s = generate(&p, false).expect("generate");
        let meta = fs::metadata(&p).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&p).expect("read");
        assert!(
            text.starts_with("0x") && text.trim_end().len() == 66,
            "{text}"
        );
        let back = read(&p).expect("read key");
        assert_eq!(back.address(), s.address());
        let addr = address_of(&s);
        assert_eq!(addr.as_str(), addr.as_str().to_lowercase());
        assert_eq!(addr.as_str().len(), 42);
    }

    #[test]
    fn generate_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("wallet.key");
        let first = generate(&p, false).expect("generate");
        assert!(matches!(
            generate(&p, false),
            Err(Error::KeyFileExists { .. })
        ));
        assert_eq!(read(&p).expect("read").address(), first.address());
        // --force replaces it, still 0600 even if the old one was loose.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        let second = generate(&p, true).expect("force");
        assert_ne!(second.address(), first.address());
        assert_eq!(
            fs::metadata(&p).expect("stat").permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read(&p).expect("read").address(), second.address());
    }

    #[test]
    fn read_refuses_loose_permissions_with_chmod_hint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("wallet.key");
        generate(&p, false).expect("generate");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = read(&p).expect_err("must refuse");
        assert!(
            e.to_string()
                .contains(&format!("chmod 600 {}", p.display())),
            "{e}"
        );
    }

    #[test]
    fn known_key_gives_known_address() {
        // Hardhat/anvil account #0.
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k");
        fsutil::write_new_private(
            &p,
            b"ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80\n",
        )
        .expect("write");
        let s = read(&p).expect("read");
        assert_eq!(
            address_of(&s).as_str(),
            "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
        );
    }

    #[test]
    fn malformed_key_files_are_refused_without_echo() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (i, bad) in [
            &b"0x1234"[..],
            b"not a key at all",
            b"0x0000000000000000000000000000000000000000000000000000000000000000",
            b"0xzz0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
            &[0xff, 0xfe, 0x00],
        ]
        .iter()
        .enumerate()
        {
            let p = dir.path().join(format!("k{i}"));
            fsutil::write_new_private(&p, bad).expect("write");
            let e = read(&p).expect_err("must refuse");
            assert!(matches!(e, Error::InvalidKeyFile { .. }), "{e:?}");
            assert!(!e.to_string().contains("zz0974"), "{e}");
        }
        let e = read(&dir.path().join("missing")).expect_err("missing");
        assert!(
            e.to_string().contains("agentkeys key generate --out"),
            "{e}"
        );
    }
}
