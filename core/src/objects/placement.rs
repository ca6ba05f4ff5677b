//! Where a chunk's replicas belong: rendezvous (highest random weight) hashing over the
//! storage layout, spread across failure domains.
//!
//! The layout is the list of nodes that hold data, each with its failure domain (the
//! `zone` and `rack` labels; a node without them is its own domain) and a weight (its
//! share of capacity). A chunk's placement is a pure function of its id and the layout, so
//! the Raft state keeps no record per replica: only what differs from the placement (an
//! agent's reported replicas) is tracked, by the leader, in memory.
//!
//! Each node gets a score per chunk, `-ln(u) / weight` turned around (weighted rendezvous:
//! `u` is a uniform hash of the chunk and the node), and the chunk's preference order is the
//! nodes by score. Replicas are taken from that order so that each new replica lands in the
//! least used zone, then the least used rack: RF 3 over 3 zones puts one in each, and RF 3
//! over one zone of 3 racks one per rack. Adding or removing a node moves only the chunks
//! whose top choices it enters or leaves (about RF/N of them).

use crate::chunk::ChunkId;

/// A node that holds data.
#[derive(Debug, Clone, PartialEq)]
pub struct LayoutNode {
    pub id: String,
    /// The `zone` label ("" when the node has none: it counts as its own zone).
    pub zone: String,
    /// The `rack` label ("" when the node has none: it counts as its own rack).
    pub rack: String,
    /// Relative capacity share (> 0), e.g. its disk's size in TiB; 1.0 for equal nodes.
    pub weight: f64,
}

impl LayoutNode {
    /// A node from its id and labels, weight 1.
    pub fn from_labels(id: &str, labels: &std::collections::BTreeMap<String, String>) -> Self {
        LayoutNode {
            id: id.to_string(),
            zone: labels.get("zone").cloned().unwrap_or_default(),
            rack: labels.get("rack").cloned().unwrap_or_default(),
            weight: 1.0,
        }
    }
}

/// The storage layout: nodes in id order, with their ids hashed once.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    nodes: Vec<LayoutNode>,
    seeds: Vec<u64>,
    zones: Vec<usize>,
    racks: Vec<usize>,
}

/// splitmix64's finaliser: a fast, well-mixed 64-bit permutation.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Numbers the distinct names in order of first appearance.
fn domain_index(names: impl Iterator<Item = String>) -> Vec<usize> {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    names
        .map(|name| {
            let next = seen.len();
            *seen.entry(name).or_insert(next)
        })
        .collect()
}

impl Layout {
    pub fn new(mut nodes: Vec<LayoutNode>) -> Self {
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes.dedup_by(|a, b| a.id == b.id);
        let seeds = nodes
            .iter()
            .map(|n| {
                let h = blake3::hash(n.id.as_bytes());
                u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
            })
            .collect();
        // A node without the label is a domain of its own; a rack lies within its zone.
        let own = |n: &LayoutNode| format!("\0node:{}", n.id);
        let zones = domain_index(nodes.iter().map(|n| {
            if n.zone.is_empty() {
                own(n)
            } else {
                n.zone.clone()
            }
        }));
        let racks = domain_index(nodes.iter().map(|n| {
            if n.rack.is_empty() {
                own(n)
            } else {
                format!("{}/{}", n.zone, n.rack)
            }
        }));
        Layout {
            nodes,
            seeds,
            zones,
            racks,
        }
    }

    pub fn nodes(&self) -> &[LayoutNode] {
        &self.nodes
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The index of node `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.binary_search_by(|n| n.id.as_str().cmp(id)).ok()
    }

    /// Every node, best first for `chunk` (weighted rendezvous order).
    pub fn ranking(&self, chunk: &ChunkId) -> Vec<usize> {
        let key = u64::from_le_bytes(chunk.as_bytes()[..8].try_into().expect("8 bytes"));
        let mut scored: Vec<(f64, usize)> = self
            .seeds
            .iter()
            .enumerate()
            .map(|(i, seed)| {
                // A uniform draw in (0, 1]; the weighted score -w / ln(u) is larger for
                // larger weights and orders like -ln(u)/w inverted.
                let u = ((mix(key ^ seed) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                let w = self.nodes[i].weight.max(f64::MIN_POSITIVE);
                (-w / u.ln().min(-f64::MIN_POSITIVE), i)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, i)| i).collect()
    }

    /// The `rf` nodes chunk `chunk` belongs on (fewer when the layout is smaller), spread
    /// over zones, then racks; `usable` filters nodes out (e.g. full disks) and the next
    /// in order takes their place.
    pub fn place_where(
        &self,
        chunk: &ChunkId,
        rf: usize,
        usable: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let order: Vec<usize> = self
            .ranking(chunk)
            .into_iter()
            .filter(|i| usable(*i))
            .collect();
        self.spread(&order, rf)
    }

    /// [`Layout::place_where`] with every node usable.
    pub fn place(&self, chunk: &ChunkId, rf: usize) -> Vec<usize> {
        self.place_where(chunk, rf, |_| true)
    }

    /// Takes `rf` nodes from `order`, each time the first whose zone, then rack, holds the
    /// fewest replicas chosen so far.
    fn spread(&self, order: &[usize], rf: usize) -> Vec<usize> {
        let mut chosen: Vec<usize> = Vec::with_capacity(rf);
        let mut zone_use = vec![0u32; self.nodes.len()];
        let mut rack_use = vec![0u32; self.nodes.len()];
        while chosen.len() < rf {
            let best = order
                .iter()
                .filter(|i| !chosen.contains(i))
                .min_by_key(|i| (zone_use[self.zones[**i]], rack_use[self.racks[**i]]));
            let Some(&i) = best else { break };
            zone_use[self.zones[i]] += 1;
            rack_use[self.racks[i]] += 1;
            chosen.push(i);
        }
        chosen
    }

    /// How many distinct zones and racks the nodes `held` span.
    pub fn domains_of(&self, held: &[usize]) -> (usize, usize) {
        let mut zones: Vec<usize> = held.iter().map(|i| self.zones[*i]).collect();
        let mut racks: Vec<usize> = held.iter().map(|i| self.racks[*i]).collect();
        zones.sort_unstable();
        zones.dedup();
        racks.sort_unstable();
        racks.dedup();
        (zones.len(), racks.len())
    }

    /// Whether replicas on `held` are as spread as `rf` replicas could be in this layout
    /// (so many zones, or all of them; then racks likewise).
    pub fn well_spread(&self, held: &[usize], rf: usize) -> bool {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        let (all_zones, all_racks) = self.domains_of(&all);
        let (zones, racks) = self.domains_of(held);
        zones >= rf.min(all_zones) && racks >= rf.min(all_racks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, zone: &str, rack: &str) -> LayoutNode {
        LayoutNode {
            id: id.into(),
            zone: zone.into(),
            rack: rack.into(),
            weight: 1.0,
        }
    }

    fn chunk(i: u32) -> ChunkId {
        ChunkId::of(&i.to_le_bytes())
    }

    #[test]
    fn replicas_spread_over_zones_then_racks() {
        let mut nodes = Vec::new();
        for z in ["a", "b", "c"] {
            for r in ["r1", "r2"] {
                for n in 0..3 {
                    nodes.push(node(&format!("{z}-{r}-{n}"), z, r));
                }
            }
        }
        let layout = Layout::new(nodes);
        for i in 0..2_000 {
            let p = layout.place(&chunk(i), 3);
            assert_eq!(p.len(), 3);
            assert_eq!(layout.domains_of(&p).0, 3, "one replica per zone");
            assert!(layout.well_spread(&p, 3));
            let p = layout.place(&chunk(i), 5);
            let (zones, racks) = layout.domains_of(&p);
            assert_eq!((zones, racks), (3, 5), "5 replicas: 3 zones, 5 racks");
        }
        // One zone, three racks: one replica per rack.
        let layout = Layout::new(
            (0..9)
                .map(|n| node(&format!("n{n}"), "z", &format!("r{}", n % 3)))
                .collect(),
        );
        for i in 0..500 {
            assert_eq!(layout.domains_of(&layout.place(&chunk(i), 3)).1, 3);
        }
    }

    #[test]
    fn placement_is_balanced_stable_and_moves_little_when_a_node_goes() {
        let nodes: Vec<LayoutNode> = (0..10).map(|n| node(&format!("n{n}"), "", "")).collect();
        let layout = Layout::new(nodes.clone());
        let mut load = [0u32; 10];
        let n = 20_000;
        let mut before = Vec::new();
        for i in 0..n {
            let p = layout.place(&chunk(i), 3);
            assert_eq!(p, layout.place(&chunk(i), 3), "deterministic");
            for x in &p {
                load[*x] += 1;
            }
            before.push(
                p.iter()
                    .map(|x| layout.nodes()[*x].id.clone())
                    .collect::<Vec<_>>(),
            );
        }
        let mean = 3.0 * n as f64 / 10.0;
        for l in load {
            assert!((f64::from(l) - mean).abs() < mean * 0.05, "{load:?}");
        }
        // Remove n3: only the replicas it held move.
        let smaller = Layout::new(nodes.into_iter().filter(|x| x.id != "n3").collect());
        let mut moved = 0;
        for i in 0..n {
            let after: Vec<String> = smaller
                .place(&chunk(i), 3)
                .iter()
                .map(|x| smaller.nodes()[*x].id.clone())
                .collect();
            let kept = before[i as usize]
                .iter()
                .filter(|id| after.contains(id))
                .count();
            let had_n3 = before[i as usize].iter().any(|id| id == "n3");
            assert_eq!(kept, if had_n3 { 2 } else { 3 }, "chunk {i}");
            moved += 3 - kept;
        }
        assert!(moved < (n as usize * 3) / 9, "{moved} replicas moved");
    }

    #[test]
    fn weights_shift_load_and_unusable_nodes_are_skipped() {
        let mut nodes: Vec<LayoutNode> = (0..4).map(|n| node(&format!("n{n}"), "", "")).collect();
        nodes[0].weight = 3.0;
        let layout = Layout::new(nodes);
        let mut first = [0u32; 4];
        for i in 0..20_000 {
            first[layout.ranking(&chunk(i))[0]] += 1;
        }
        // Weighted rendezvous: P(first) = w / sum(w) = 3/6 for n0.
        assert!((9_000..11_000).contains(&first[0]), "{first:?}");
        let n0 = layout.index_of("n0").expect("n0");
        for i in 0..200 {
            let p = layout.place_where(&chunk(i), 3, |x| x != n0);
            assert_eq!(p.len(), 3);
            assert!(!p.contains(&n0));
        }
        assert_eq!(layout.place(&chunk(1), 9).len(), 4, "at most every node");
        assert!(Layout::new(vec![]).place(&chunk(1), 3).is_empty());
    }
}
