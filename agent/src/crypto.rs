//! Cryptography: the master key, authenticated encryption (XChaCha20-Poly1305
//! with random nonces), keyed BLAKE3 blob IDs, and Argon2id password
//! derivation. Nothing else in the engine touches a cipher or a key byte.

use chacha20::cipher::consts::U10;
use chacha20::cipher::generic_array::GenericArray;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::constants::{NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::id::Id;

/// Fill `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    // The OS RNG failing is not recoverable and not caused by user input.
    getrandom::fill(buf).expect("operating system random number generator failed");
}

/// Associated-data domains: a ciphertext made for one purpose never opens as another.
pub mod aad {
    /// Repository configuration file.
    pub const CONFIG: &[u8] = b"cairn/v1/config";
    /// Index file.
    pub const INDEX: &[u8] = b"cairn/v1/index";
    /// Snapshot file.
    pub const SNAPSHOT: &[u8] = b"cairn/v1/snapshot";
    /// Encrypted header at the end of a pack.
    pub const PACK_HEADER: &[u8] = b"cairn/v1/pack-header";
    /// Master key inside a key file (encrypted with the password-derived key).
    pub const KEY: &[u8] = b"cairn/v1/key";
    /// Prefix of a blob's associated data (followed by the type byte and blob ID).
    pub const BLOB_PREFIX: &[u8] = b"cairn/v1/blob";
}

/// The repository's secrets: one encryption key, one key for blob IDs, one
/// key for the chunker's gear table. Generated at `init`, stored only inside
/// key files, encrypted under password-derived keys.
#[derive(Clone, Serialize, Deserialize)]
pub struct MasterKey {
    #[serde(with = "hex::serde")]
    encrypt: [u8; 32],
    #[serde(with = "hex::serde")]
    id: [u8; 32],
    #[serde(with = "hex::serde")]
    chunker: [u8; 32],
}

/// The key material is wiped when a key is dropped (clones included), so
/// it does not linger in freed memory (a core dump, a swapped-out page).
impl Drop for MasterKey {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl MasterKey {
    fn wipe(&mut self) {
        self.encrypt.zeroize();
        self.id.zeroize();
        self.chunker.zeroize();
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> MasterKey {
        let mut k = MasterKey {
            encrypt: [0; 32],
            id: [0; 32],
            chunker: [0; 32],
        };
        fill_random(&mut k.encrypt);
        fill_random(&mut k.id);
        fill_random(&mut k.chunker);
        k
    }

    /// A key for a second repository whose blob IDs and chunk boundaries equal
    /// this one's (same ID and chunker keys) but with its own encryption key:
    /// `copy` between the two then skips blobs by ID without reading them.
    pub fn sibling(&self) -> MasterKey {
        let mut k = self.clone();
        fill_random(&mut k.encrypt);
        k
    }

    /// Whether blob IDs computed with `other` equal this key's.
    pub fn same_blob_ids(&self, other: &MasterKey) -> bool {
        self.id == other.id
    }

    /// Build from explicit parts (test vectors).
    pub fn from_parts(encrypt: [u8; 32], id: [u8; 32], chunker: [u8; 32]) -> MasterKey {
        MasterKey {
            encrypt,
            id,
            chunker,
        }
    }

    /// The blob ID of `plaintext`: BLAKE3 keyed with the repository's ID key.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.id, plaintext).as_bytes())
    }

    /// The chunker key (expanded into the gear table by the chunker).
    pub fn chunker_key(&self) -> &[u8; 32] {
        &self.chunker
    }

    /// Encrypt with a fresh random nonce: `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.encrypt, aad, plaintext)
    }

    /// Encrypt in place without copying: `buf` holds [`NONCE_LEN`] placeholder
    /// bytes followed by the plaintext; on return it holds `nonce || ciphertext || tag`.
    pub fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        seal_buf(&self.encrypt, &nonce, aad, buf);
    }

    /// [`MasterKey::open`] without a copy: decrypts `nonce || ciphertext || tag`
    /// in `data` itself and returns the plaintext part of it.
    ///
    /// # Errors
    /// As [`MasterKey::open`].
    pub fn open_in_place<'a>(
        &self,
        aad: &[u8],
        data: &'a mut [u8],
        object: &str,
    ) -> Result<&'a mut [u8]> {
        let failed = || {
            Error::corrupt(
                object,
                "authentication failed (modified, truncated or swapped data)",
            )
        };
        if data.len() < NONCE_LEN + TAG_LEN {
            return Err(failed());
        }
        let (nonce, rest) = data.split_at_mut(NONCE_LEN);
        let len = open_in_place(&self.encrypt, aad, nonce, rest).ok_or_else(failed)?;
        Ok(&mut rest[..len])
    }

    /// Decrypt and authenticate what [`MasterKey::seal`] produced.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `object` when the data is too short or fails authentication.
    pub fn open(&self, aad: &[u8], data: &[u8], object: &str) -> Result<Vec<u8>> {
        open_with(&self.encrypt, aad, data).ok_or_else(|| {
            Error::corrupt(
                object,
                "authentication failed (modified, truncated or swapped data)",
            )
        })
    }
}

/// Encrypt `plaintext` under `key` with a random 24-byte nonce.
pub fn seal_with(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce);
    seal_with_nonce(key, &nonce, aad, plaintext)
}

/// XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha) as its definition builds it:
/// HChaCha20 derives a subkey from the key and the first 16 nonce bytes, then
/// the IETF ChaCha20-Poly1305 AEAD runs under that subkey with the nonce
/// `0u32 || nonce[16..24]`. The AEAD is ring's (assembly, several times the
/// throughput of the portable implementation here); the output is the same
/// bytes (a test checks against the `chacha20poly1305` crate).
fn xchacha(key: &[u8; 32], nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
    let sub = chacha20::hchacha::<U10>(
        GenericArray::from_slice(key),
        GenericArray::from_slice(&nonce[..16]),
    );
    // A 32-byte key is always accepted.
    let aead = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, sub.as_slice()).expect("ChaCha20-Poly1305 key length"),
    );
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&nonce[16..]);
    (aead, Nonce::assume_unique_for_key(n))
}

/// Seal `buf[NONCE_LEN..]` in place and append the tag.
fn seal_buf(key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) {
    let (aead, n) = xchacha(key, nonce);
    let tag = aead
        .seal_in_place_separate_tag(n, Aad::from(aad), &mut buf[NONCE_LEN..])
        // Only fails for plaintexts beyond 256 GiB, which the engine never builds.
        .expect("XChaCha20-Poly1305 encryption of a bounded buffer");
    buf.extend_from_slice(tag.as_ref());
}

/// Encrypt with an explicit nonce. Only for test vectors: a nonce must never repeat.
pub fn seal_with_nonce(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    buf.extend_from_slice(nonce);
    buf.extend_from_slice(plaintext);
    seal_buf(key, nonce, aad, &mut buf);
    buf
}

/// Decrypt `nonce || ciphertext || tag`; `None` if it does not authenticate.
pub fn open_with(key: &[u8; 32], aad: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let mut buf = data[NONCE_LEN..].to_vec();
    let len = open_in_place(key, aad, &data[..NONCE_LEN], &mut buf)?;
    buf.truncate(len);
    Some(buf)
}

/// Decrypt `ciphertext || tag` in `buf` in place; the plaintext is the first
/// returned-many bytes of `buf`. `None` if it does not authenticate.
fn open_in_place(key: &[u8; 32], aad: &[u8], nonce: &[u8], buf: &mut [u8]) -> Option<usize> {
    let nonce: &[u8; NONCE_LEN] = nonce.try_into().ok()?;
    let (aead, n) = xchacha(key, nonce);
    aead.open_in_place(n, Aad::from(aad), buf)
        .ok()
        .map(|p| p.len())
}

/// Argon2id parameters, stored in each key file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always `argon2id`.
    pub algorithm: String,
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Random salt (hex).
    #[serde(with = "hex::serde")]
    pub salt: Vec<u8>,
}

impl KdfParams {
    /// New parameters with a random 16-byte salt.
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> KdfParams {
        let mut salt = vec![0u8; 16];
        fill_random(&mut salt);
        KdfParams {
            algorithm: "argon2id".into(),
            memory_kib,
            iterations,
            parallelism,
            salt,
        }
    }

    /// Derive the 32-byte key-encryption key from a password.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the stored parameters are not valid Argon2id parameters.
    pub fn derive(&self, password: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        if self.algorithm != "argon2id" {
            return Err(Error::InvalidInput(format!(
                "key derivation {:?} is not supported",
                self.algorithm
            )));
        }
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| Error::InvalidInput(format!("invalid Argon2id parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(password, &self.salt, &mut *out)
            .map_err(|e| Error::InvalidInput(format!("key derivation failed: {e}")))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_parts([1; 32], [2; 32], [3; 32])
    }

    #[test]
    fn xchacha_construction_equals_the_reference_crate() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        use chacha20poly1305::{XChaCha20Poly1305, XNonce};
        let mut rnd = [0u8; 4096 + 24 + 32 + 40];
        for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 255, 256, 1000, 4096] {
            fill_random(&mut rnd);
            let key: [u8; 32] = rnd[..32].try_into().unwrap();
            let nonce: [u8; NONCE_LEN] = rnd[32..56].try_into().unwrap();
            let aad = &rnd[56..56 + len % 40];
            let msg = &rnd[96..96 + len];
            let ours = seal_with_nonce(&key, &nonce, aad, msg);
            let theirs = XChaCha20Poly1305::new((&key).into())
                .encrypt(XNonce::from_slice(&nonce), Payload { msg, aad })
                .unwrap();
            assert_eq!(&ours[..NONCE_LEN], &nonce);
            assert_eq!(&ours[NONCE_LEN..], &theirs[..], "length {len}");
            assert_eq!(open_with(&key, aad, &ours).as_deref(), Some(msg));
        }
    }

    #[test]
    fn a_dropped_key_is_wiped() {
        let mut k = key();
        k.wipe(); // what drop does
        assert_eq!((k.encrypt, k.id, k.chunker), ([0; 32], [0; 32], [0; 32]));
    }

    #[test]
    fn seal_open_round_trip() {
        let k = key();
        let ct = k.seal(aad::INDEX, b"hello");
        assert_eq!(ct.len(), NONCE_LEN + 5 + TAG_LEN);
        assert_eq!(k.open(aad::INDEX, &ct, "x").unwrap(), b"hello");
    }

    #[test]
    fn tampering_wrong_domain_and_truncation_are_detected() {
        let k = key();
        let mut ct = k.seal(aad::INDEX, b"hello world");
        assert!(
            k.open(aad::SNAPSHOT, &ct, "x").is_err(),
            "other AAD must fail"
        );
        assert!(
            k.open(aad::INDEX, &ct[..ct.len() - 1], "x").is_err(),
            "truncation must fail"
        );
        assert!(
            k.open(aad::INDEX, &ct[..10], "x").is_err(),
            "short input must fail"
        );
        ct[30] ^= 1;
        let err = k.open(aad::INDEX, &ct, "index 1234").unwrap_err();
        assert!(err.to_string().contains("index 1234"));
    }

    #[test]
    fn seal_in_place_matches_open() {
        let k = key();
        let mut buf = vec![0u8; NONCE_LEN];
        buf.extend_from_slice(b"in place");
        k.seal_in_place(aad::PACK_HEADER, &mut buf);
        assert_eq!(k.open(aad::PACK_HEADER, &buf, "x").unwrap(), b"in place");
    }

    #[test]
    fn nonces_are_random() {
        let k = key();
        assert_ne!(k.seal(aad::INDEX, b"a"), k.seal(aad::INDEX, b"a"));
    }

    /// Test vectors published in docs/FORMAT.md, cross-checked with independent
    /// implementations (Python `blake3`, PyCryptodome, argon2-cffi).
    #[test]
    fn format_test_vectors() {
        let k = key();
        assert_eq!(
            k.blob_id(b"cairn").to_hex(),
            "241e286ba213f893f2e578b93102e7662ffde003ef61396ff93b8ab554dc1322"
        );
        let sealed = seal_with_nonce(&[1; 32], &[7; NONCE_LEN], aad::CONFIG, b"cairn");
        assert_eq!(
            hex::encode(&sealed[NONCE_LEN..]),
            "fe4de19ad30cf9377a759ba80879194a3616d798a4"
        );
        let kdf = KdfParams {
            algorithm: "argon2id".into(),
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
            salt: b"cairn-test-salt!".to_vec(),
        };
        assert_eq!(
            hex::encode(*kdf.derive(b"password").unwrap()),
            "ea45cd35a8bb2441335ec643afe75f5279d8e65fb00132eaf74c47c1ac5098e9"
        );
    }
}
