//! A string interner with dense `u32` ids: names are stored once in one byte arena and found
//! through a hash table of ids, about 10 bytes per name beyond its text.
//!
//! A tenant's query data uses two: one for customers (joins across days: repeat contacts,
//! conversions, retention, distinct counts) and one for agents, teams, inboxes, tags, currencies
//! and conversion kinds. Ids are dense so per-query tables can be plain arrays indexed by id.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

/// Id 0 is reserved for "absent" (the empty name).
pub const NONE: u32 = 0;

/// Names with dense ids; id 0 is the empty name.
#[derive(Clone, Default)]
pub struct Interner {
    bytes: Vec<u8>,
    /// `ends[id]` = end of name `id` in `bytes`; the name starts at `ends[id - 1]`.
    ends: Vec<u32>,
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl std::fmt::Debug for Interner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Interner({} names)", self.len())
    }
}

impl Interner {
    pub fn new() -> Self {
        Self {
            ends: vec![0],
            ..Self::default()
        }
    }

    /// Number of ids (including the reserved 0).
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether only the reserved empty name exists.
    pub fn is_empty(&self) -> bool {
        self.ends.len() <= 1
    }

    /// The name of `id` ("" for 0 or an unknown id).
    pub fn name(&self, id: u32) -> &str {
        // Only whole `&str`s are ever appended, so every stored range is valid UTF-8.
        std::str::from_utf8(self.bytes_of(id)).unwrap_or("")
    }

    /// The bytes of `id`'s name (lookups compare bytes: no UTF-8 check per probe).
    fn bytes_of(&self, id: u32) -> &[u8] {
        let id = id as usize;
        if id == 0 || id >= self.ends.len() {
            return &[];
        }
        &self.bytes[self.ends[id - 1] as usize..self.ends[id] as usize]
    }

    /// The id of `name`, if it was interned ("" is always 0).
    pub fn get(&self, name: &str) -> Option<u32> {
        if name.is_empty() {
            return Some(NONE);
        }
        let hash = self.hasher.hash_one(name);
        self.table.find(hash, |id| self.name(*id) == name).copied()
    }

    /// The id of `name`, adding it when new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return NONE;
        }
        let hash = self.hasher.hash_one(name);
        if let Some(id) = self.table.find(hash, |id| self.bytes_of(*id) == name.as_bytes()) {
            return *id;
        }
        self.bytes.extend_from_slice(name.as_bytes());
        let id = self.ends.len() as u32;
        self.ends.push(self.bytes.len() as u32);
        let Self {
            table,
            ends,
            bytes,
            hasher,
        } = self;
        // Rehashing (when the table grows) must hash a name exactly as lookups do: as a `str`.
        table.insert_unique(hash, id, |id| {
            let i = *id as usize;
            let name = std::str::from_utf8(&bytes[ends[i - 1] as usize..ends[i] as usize]).unwrap_or("");
            hasher.hash_one(name)
        });
        id
    }

    /// `intern` for an optional name (`None` = 0).
    pub fn intern_opt(&mut self, name: Option<&str>) -> u32 {
        name.map_or(NONE, |n| self.intern(n))
    }

    /// Heap bytes held (for the query cache's budget).
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * 4 + self.table.capacity() * 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_dense_ids_once_and_read_back() {
        let mut i = Interner::new();
        assert_eq!(i.intern(""), NONE);
        let ann = i.intern("ann");
        let bob = i.intern("bob");
        assert_eq!((ann, bob), (1, 2));
        assert_eq!(i.intern("ann"), ann);
        assert_eq!(i.intern_opt(Some("bob")), bob);
        assert_eq!(
            (i.name(ann), i.name(bob), i.name(0), i.name(99)),
            ("ann", "bob", "", "")
        );
        assert_eq!(
            (i.get("bob"), i.get("carl"), i.get("")),
            (Some(bob), None, Some(0))
        );
        for n in 0..10_000 {
            assert_eq!(i.intern(&format!("cust-{n}")), n + 3);
        }
        // After the table grew many times, every name is still found under its first id.
        for n in 0..10_000 {
            assert_eq!(i.intern(&format!("cust-{n}")), n + 3);
            assert_eq!(i.get(&format!("cust-{n}")), Some(n + 3));
        }
        assert_eq!(i.intern("ann"), ann);
        assert_eq!(i.get("cust-9999"), Some(10_002));
        assert_eq!(i.name(10_002), "cust-9999");
        assert_eq!(i.len(), 10_003);
    }
}
