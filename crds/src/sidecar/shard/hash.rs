//! The key hash functions twemproxy 0.5 offers, bit for bit.
//!
//! twemproxy hashes keys as C `char`s, which are signed on the platforms it runs on: a byte
//! ≥ 0x80 is sign-extended before it is mixed in by the FNV, one-at-a-time and hsieh
//! functions. We reproduce that (`sext`), or keys with non-ASCII bytes would land on other
//! shards than they do under twemproxy.

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};

/// A key hash function, named as in twemproxy's `hash:` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKind {
    /// twemproxy's default. Despite the name, 32-bit arithmetic (twemproxy truncates the
    /// 64-bit offset basis and prime).
    Fnv1a64,
    /// FNV-1 with 64-bit arithmetic, truncated to 32 bits.
    Fnv164,
    /// FNV-1a, 32-bit.
    Fnv1a32,
    /// FNV-1, 32-bit.
    Fnv132,
    /// The low four bytes of the MD5 digest, little-endian.
    Md5,
    /// libmemcached's CRC-32 variant: bits 16..31 of the CRC, masked to 15 bits.
    Crc32,
    /// The standard CRC-32 (IEEE).
    Crc32a,
    /// CRC-16/XMODEM, with twemproxy's unmasked 32-bit register.
    Crc16,
    /// Jenkins' one-at-a-time.
    OneAtATime,
    /// MurmurHash2 with twemproxy's length-dependent seed.
    Murmur,
    /// Jenkins' lookup3 `hashlittle` with initval 13.
    Jenkins,
    /// Paul Hsieh's SuperFastHash.
    Hsieh,
}

impl HashKind {
    /// Every hash function, in the order of twemproxy's documentation.
    pub const ALL: [HashKind; 12] = [
        HashKind::OneAtATime,
        HashKind::Md5,
        HashKind::Crc16,
        HashKind::Crc32,
        HashKind::Crc32a,
        HashKind::Fnv164,
        HashKind::Fnv1a64,
        HashKind::Fnv132,
        HashKind::Fnv1a32,
        HashKind::Hsieh,
        HashKind::Murmur,
        HashKind::Jenkins,
    ];

    /// The name twemproxy's config uses.
    pub fn name(self) -> &'static str {
        match self {
            HashKind::Fnv1a64 => "fnv1a_64",
            HashKind::Fnv164 => "fnv1_64",
            HashKind::Fnv1a32 => "fnv1a_32",
            HashKind::Fnv132 => "fnv1_32",
            HashKind::Md5 => "md5",
            HashKind::Crc32 => "crc32",
            HashKind::Crc32a => "crc32a",
            HashKind::Crc16 => "crc16",
            HashKind::OneAtATime => "one_at_a_time",
            HashKind::Murmur => "murmur",
            HashKind::Jenkins => "jenkins",
            HashKind::Hsieh => "hsieh",
        }
    }

    /// Hashes `key` exactly as twemproxy's function of the same name does.
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            HashKind::Fnv1a64 => fnv1a_64(key),
            HashKind::Fnv164 => fnv1_64(key),
            HashKind::Fnv1a32 => fnv1a_32(key),
            HashKind::Fnv132 => fnv1_32(key),
            HashKind::Md5 => md5_low(key),
            HashKind::Crc32 => (!crc32_raw(key) >> 16) & 0x7fff,
            HashKind::Crc32a => !crc32_raw(key),
            HashKind::Crc16 => crc16(key),
            HashKind::OneAtATime => one_at_a_time(key),
            HashKind::Murmur => murmur(key),
            HashKind::Jenkins => jenkins(key),
            HashKind::Hsieh => hsieh(key),
        }
    }
}

impl fmt::Display for HashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown hash function name.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown hash function {0:?} (one of: fnv1a_64, fnv1_64, fnv1a_32, fnv1_32, md5, crc16, crc32, crc32a, one_at_a_time, murmur, jenkins, hsieh)"
)]
pub struct UnknownHash(pub String);

impl FromStr for HashKind {
    type Err = UnknownHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashKind::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .ok_or_else(|| UnknownHash(s.to_owned()))
    }
}

/// A byte as C's signed `char` converted to an unsigned 64-bit integer.
#[inline]
fn sext(b: u8) -> u64 {
    b as i8 as i64 as u64
}

const FNV_64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_64_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_32_INIT: u32 = 2_166_136_261;
const FNV_32_PRIME: u32 = 16_777_619;

fn fnv1_64(key: &[u8]) -> u32 {
    let mut h = FNV_64_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV_64_PRIME);
        h ^= sext(b);
    }
    h as u32
}

fn fnv1a_64(key: &[u8]) -> u32 {
    let mut h = FNV_64_INIT as u32;
    for &b in key {
        h ^= sext(b) as u32;
        h = h.wrapping_mul(FNV_64_PRIME as u32);
    }
    h
}

fn fnv1_32(key: &[u8]) -> u32 {
    let mut h = FNV_32_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV_32_PRIME);
        h ^= sext(b) as u32;
    }
    h
}

fn fnv1a_32(key: &[u8]) -> u32 {
    let mut h = FNV_32_INIT;
    for &b in key {
        h ^= sext(b) as u32;
        h = h.wrapping_mul(FNV_32_PRIME);
    }
    h
}

/// The MD5 digest of `data`.
pub fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

fn md5_low(key: &[u8]) -> u32 {
    let d = md5(key);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// The CRC register before the final inversion.
fn crc32_raw(key: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &b in key {
        crc = (crc >> 8) ^ CRC32_TABLE[((crc ^ b as u32) & 0xff) as usize];
    }
    crc
}

const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u16) << 8;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000 != 0 {
                (c << 1) ^ 0x1021
            } else {
                c << 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc16(key: &[u8]) -> u32 {
    let mut crc: u32 = 0;
    for &b in key {
        crc = (crc << 8) ^ CRC16_TABLE[(((crc >> 8) ^ sext(b) as u32) & 0xff) as usize] as u32;
    }
    crc
}

fn one_at_a_time(key: &[u8]) -> u32 {
    let mut v: u32 = 0;
    for &b in key {
        v = v.wrapping_add(sext(b) as u32);
        v = v.wrapping_add(v << 10);
        v ^= v >> 6;
    }
    v = v.wrapping_add(v << 3);
    v ^= v >> 11;
    v.wrapping_add(v << 15)
}

fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let len = key.len() as u32;
    let mut h = 0xdead_beef_u32.wrapping_mul(len) ^ len;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

fn jenkins(key: &[u8]) -> u32 {
    #[inline]
    fn word(k: &[u8]) -> u32 {
        let mut w = [0u8; 4];
        w[..k.len()].copy_from_slice(k);
        u32::from_le_bytes(w)
    }
    let mut a = 0xdead_beef_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(13);
    let (mut b, mut c) = (a, a);
    let mut rest = key;
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        // mix(a, b, c)
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(4);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(6);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(8);
        b = b.wrapping_add(a);
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(16);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(19);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(4);
        b = b.wrapping_add(a);
        rest = &rest[12..];
    }
    if rest.is_empty() {
        return c;
    }
    a = a.wrapping_add(word(&rest[..rest.len().min(4)]));
    if rest.len() > 4 {
        b = b.wrapping_add(word(&rest[4..rest.len().min(8)]));
    }
    if rest.len() > 8 {
        c = c.wrapping_add(word(&rest[8..]));
    }
    // final(a, b, c)
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

fn hsieh(key: &[u8]) -> u32 {
    #[inline]
    fn get16(k: &[u8]) -> u32 {
        u16::from_le_bytes([k[0], k[1]]) as u32
    }
    if key.is_empty() {
        return 0;
    }
    let mut h: u32 = 0;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        h = h.wrapping_add(get16(&c[0..2]));
        let tmp = (get16(&c[2..4]) << 11) ^ h;
        h = (h << 16) ^ tmp;
        h = h.wrapping_add(h >> 11);
    }
    let tail = chunks.remainder();
    match tail.len() {
        3 => {
            h = h.wrapping_add(get16(tail));
            h ^= h << 16;
            h ^= (sext(tail[2]) as u32) << 18;
            h = h.wrapping_add(h >> 11);
        }
        2 => {
            h = h.wrapping_add(get16(tail));
            h ^= h << 11;
            h = h.wrapping_add(h >> 17);
        }
        1 => {
            h = h.wrapping_add(tail[0] as u32);
            h ^= h << 10;
            h = h.wrapping_add(h >> 1);
        }
        _ => {}
    }
    h ^= h << 3;
    h = h.wrapping_add(h >> 5);
    h ^= h << 4;
    h = h.wrapping_add(h >> 17);
    h ^= h << 25;
    h.wrapping_add(h >> 6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_function() {
        for h in HashKind::ALL {
            assert_eq!(h.name().parse::<HashKind>().unwrap(), h);
        }
        let err = "sha1".parse::<HashKind>().unwrap_err().to_string();
        assert!(err.contains("sha1") && err.contains("fnv1a_64"), "{err}");
    }

    #[test]
    fn standard_functions_match_their_published_check_values() {
        // The CRC catalogue's check input; these values are what any CRC-32 and
        // CRC-16/XMODEM implementation must produce.
        assert_eq!(HashKind::Crc32a.hash(b"123456789"), 0xcbf4_3926);
        // twemproxy never masks its CRC-16 register to 16 bits: only the low half is the CRC.
        assert_eq!(HashKind::Crc16.hash(b"123456789") & 0xffff, 0x31c3);
        // FNV-1 / FNV-1a 32-bit reference values from the FNV authors' test suite.
        assert_eq!(HashKind::Fnv132.hash(b"a"), 0x050c_5d7e);
        assert_eq!(HashKind::Fnv1a32.hash(b"a"), 0xe40c_292c);
        assert_eq!(HashKind::Fnv1a32.hash(b"foobar"), 0xbf9c_f968);
        // RFC 1321: MD5("abc") = 900150983cd24fb0…, little-endian low word.
        assert_eq!(HashKind::Md5.hash(b"abc"), 0x9850_0190);
    }

    #[test]
    fn twemproxy_truncates_fnv1a_64_to_32_bit_arithmetic() {
        // With a 32-bit state, fnv1a_64 equals FNV-1a-32 seeded with the truncated
        // 64-bit basis and multiplied by the truncated prime (0x1b3).
        let mut h = 0x8422_2325_u32;
        for b in b"user:42" {
            h ^= *b as u32;
            h = h.wrapping_mul(0x1b3);
        }
        assert_eq!(HashKind::Fnv1a64.hash(b"user:42"), h);
    }

    #[test]
    fn high_bytes_are_sign_extended_like_a_c_char() {
        // 0xff as a signed char is -1: FNV-1a xors in 0xffffffff, not 0xff.
        let expected = (FNV_32_INIT ^ 0xffff_ffff).wrapping_mul(FNV_32_PRIME);
        assert_eq!(HashKind::Fnv1a32.hash(&[0xff]), expected);
        assert_ne!(
            HashKind::Fnv1a32.hash(&[0xff]),
            HashKind::Fnv1a32.hash(&[0x7f])
        );
    }

    #[test]
    fn crc32_keeps_fifteen_bits() {
        for key in [&b"a"[..], b"hello", b"{tag}x"] {
            assert!(HashKind::Crc32.hash(key) <= 0x7fff);
            assert_eq!(
                HashKind::Crc32.hash(key),
                (HashKind::Crc32a.hash(key) >> 16) & 0x7fff
            );
        }
    }

    #[test]
    fn empty_keys_hash_without_panicking() {
        for h in HashKind::ALL {
            let _ = h.hash(b"");
        }
        assert_eq!(HashKind::Hsieh.hash(b""), 0);
    }
}
