//! A generational slab: stable small keys, O(1) lookup, stale keys detected.

use serde::{Deserialize, Serialize};

/// A slot index plus the generation it was handed out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    index: u32,
    generation: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// Values addressed by [`Key`]; a removed value's key never finds a later value.
#[derive(Debug, Clone, PartialEq)]
pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Number of live values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores `value` and returns its key.
    pub fn insert(&mut self, value: T) -> Key {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            if let Some(slot) = self.slots.get_mut(index as usize) {
                slot.generation = slot.generation.wrapping_add(1);
                slot.value = Some(value);
                return Key {
                    index,
                    generation: slot.generation,
                };
            }
        }
        // Slot counts stay far below u32::MAX: callers bound how many values live at once.
        let index = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
        });
        Key {
            index,
            generation: 0,
        }
    }

    /// The value under `key`, if it is still there.
    pub fn get(&self, key: Key) -> Option<&T> {
        self.slots
            .get(key.index as usize)
            .filter(|s| s.generation == key.generation)
            .and_then(|s| s.value.as_ref())
    }

    /// The value under `key`, mutably.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        self.slots
            .get_mut(key.index as usize)
            .filter(|s| s.generation == key.generation)
            .and_then(|s| s.value.as_mut())
    }

    /// Takes the value out; its key goes stale.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        let slot = self
            .slots
            .get_mut(key.index as usize)
            .filter(|s| s.generation == key.generation)?;
        let value = slot.value.take()?;
        self.free.push(key.index);
        self.len -= 1;
        Some(value)
    }

    /// Every live value with its key, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let value = s.value.as_ref()?;
            let index = u32::try_from(i).ok()?;
            Some((
                Key {
                    index,
                    generation: s.generation,
                },
                value,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_key_does_not_find_reused_slot() {
        let mut s = Slab::default();
        let a = s.insert("a");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.len(), 1);
        assert_eq!(s.iter().count(), 1);
    }
}
