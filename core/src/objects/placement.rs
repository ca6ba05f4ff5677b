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
    /// Distinct zones and racks in the whole layout.
    zone_count: usize,
    rack_count: usize,
    /// Every node has the same weight: the order is the hash order (no logarithms).
    uniform: bool,
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
        let count = |v: &[usize]| v.iter().max().map_or(0, |m| m + 1);
        let uniform = nodes.windows(2).all(|w| w[0].weight == w[1].weight);
        Layout {
            zone_count: count(&zones),
            rack_count: count(&racks),
            uniform,
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

    /// Each node's rank key for `chunk`, smaller first (ties by index): the weighted
    /// rendezvous score -w / ln(u) inverted, or with equal weights the draw u itself
    /// (the same order, without a logarithm per node).
    fn keys(&self, chunk: &ChunkId) -> impl Iterator<Item = (u64, usize)> + '_ {
        let key = u64::from_le_bytes(chunk.as_bytes()[..8].try_into().expect("8 bytes"));
        self.seeds.iter().enumerate().map(move |(i, seed)| {
            let draw = mix(key ^ seed) >> 11;
            if self.uniform {
                return (u64::MAX - draw, i);
            }
            // A uniform draw in (0, 1]; the score is positive, so its bits order as it does.
            let u = (draw as f64 + 1.0) / (1u64 << 53) as f64;
            let w = self.nodes[i].weight.max(f64::MIN_POSITIVE);
            let score = -w / u.ln().min(-f64::MIN_POSITIVE);
            (u64::MAX - score.to_bits(), i)
        })
    }

    /// Every node, best first for `chunk` (weighted rendezvous order).
    pub fn ranking(&self, chunk: &ChunkId) -> Vec<usize> {
        let mut keyed: Vec<(u64, usize)> = self.keys(chunk).collect();
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, i)| i).collect()
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
        let mut keyed: Vec<(u64, usize)> = self.keys(chunk).filter(|(_, i)| usable(*i)).collect();
        // Usually the first few in order decide: sort only those, and the whole order
        // when spreading needs to look further.
        let few = (4 * rf + 8).min(keyed.len());
        if few < keyed.len() && few > 0 {
            keyed.select_nth_unstable(few - 1);
            keyed[..few].sort_unstable();
            let order: Vec<usize> = keyed[..few].iter().map(|(_, i)| *i).collect();
            if let Some(chosen) = self.spread_within(&order, rf, false) {
                return chosen;
            }
        }
        keyed.sort_unstable();
        let order: Vec<usize> = keyed.into_iter().map(|(_, i)| i).collect();
        self.spread(&order, rf)
    }

    /// [`Layout::place_where`] with every node usable.
    pub fn place(&self, chunk: &ChunkId, rf: usize) -> Vec<usize> {
        self.place_where(chunk, rf, |_| true)
    }

    /// Takes `rf` nodes from `order`, each time the first whose zone, then rack, holds the
    /// fewest replicas chosen so far.
    fn spread(&self, order: &[usize], rf: usize) -> Vec<usize> {
        self.spread_within(order, rf, true)
            .expect("a whole order always decides")
    }

    /// [`Layout::spread`] over `order`; when `order` is only the start of the whole order
    /// (`whole` false), `None` if a choice needed to look past it.
    fn spread_within(&self, order: &[usize], rf: usize, whole: bool) -> Option<Vec<usize>> {
        let mut chosen: Vec<usize> = Vec::with_capacity(rf);
        let mut zone_use = vec![0u32; self.zone_count];
        let mut rack_use = vec![0u32; self.rack_count];
        let (mut zones_used, mut racks_used) = (0, 0);
        while chosen.len() < rf {
            // The least use any node could have: 0 while a domain is unused. A candidate
            // with it is the first minimum; the scan stops there.
            let floor = |used: usize, count: usize, uses: &[u32]| {
                if used < count {
                    0
                } else {
                    uses.iter().copied().min().unwrap_or(0)
                }
            };
            let bound = (
                floor(zones_used, self.zone_count, &zone_use),
                floor(racks_used, self.rack_count, &rack_use),
            );
            let mut best: Option<((u32, u32), usize)> = None;
            let mut stopped = false;
            for &i in order {
                if chosen.contains(&i) {
                    continue;
                }
                let key = (zone_use[self.zones[i]], rack_use[self.racks[i]]);
                if best.is_none_or(|(k, _)| key < k) {
                    best = Some((key, i));
                    if key == bound {
                        stopped = true;
                        break;
                    }
                }
            }
            if !stopped && !whole {
                return None;
            }
            let Some((_, i)) = best else { break };
            zones_used += usize::from(zone_use[self.zones[i]] == 0);
            racks_used += usize::from(rack_use[self.racks[i]] == 0);
            zone_use[self.zones[i]] += 1;
            rack_use[self.racks[i]] += 1;
            chosen.push(i);
        }
        Some(chosen)
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
        let (zones, racks) = self.domains_of(held);
        zones >= rf.min(self.zone_count) && racks >= rf.min(self.rack_count)
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

    /// The plain form of `spread`: the first node in order whose zone, then rack, has the
    /// fewest replicas, scanning the whole order each time.
    fn spread_by_full_scan(layout: &Layout, order: &[usize], rf: usize) -> Vec<usize> {
        let mut chosen: Vec<usize> = Vec::new();
        let mut zone_use = vec![0u32; layout.nodes.len()];
        let mut rack_use = vec![0u32; layout.nodes.len()];
        while chosen.len() < rf {
            let best = order
                .iter()
                .filter(|i| !chosen.contains(i))
                .min_by_key(|i| (zone_use[layout.zones[**i]], rack_use[layout.racks[**i]]));
            let Some(&i) = best else { break };
            zone_use[layout.zones[i]] += 1;
            rack_use[layout.racks[i]] += 1;
            chosen.push(i);
        }
        chosen
    }

    #[test]
    fn spreading_stops_early_and_chooses_as_a_full_scan_does() {
        for (nodes, zones, racks) in [(5, 0, 0), (12, 2, 4), (40, 3, 7), (9, 1, 3), (30, 5, 30)] {
            let layout = Layout::new(
                (0..nodes)
                    .map(|i| {
                        let z = if zones == 0 {
                            String::new()
                        } else {
                            format!("z{}", i % zones)
                        };
                        let r = if racks == 0 {
                            String::new()
                        } else {
                            format!("r{}", i % racks)
                        };
                        node(&format!("n{i:02}"), &z, &r)
                    })
                    .collect(),
            );
            for i in 0..500 {
                let c = chunk(i);
                let order: Vec<usize> = layout
                    .ranking(&c)
                    .into_iter()
                    .filter(|n| !(n + i as usize).is_multiple_of(5))
                    .collect();
                for rf in 1..=7 {
                    assert_eq!(
                        layout.spread(&order, rf),
                        spread_by_full_scan(&layout, &order, rf),
                        "{nodes} nodes, {zones} zones, {racks} racks, rf {rf}"
                    );
                }
            }
        }
    }

    #[test]
    fn ranks_follow_the_weighted_scores_and_placement_the_whole_order() {
        let nodes: Vec<LayoutNode> = (0..40)
            .map(|i| {
                node(
                    &format!("n{i:02}"),
                    &format!("z{}", i % 3),
                    &format!("r{}", i % 7),
                )
            })
            .collect();
        let mut weighted = nodes.clone();
        for (i, n) in weighted.iter_mut().enumerate() {
            n.weight = 1.0 + (i % 4) as f64;
        }
        for layout in [Layout::new(nodes), Layout::new(weighted)] {
            for i in 0..2_000 {
                let c = chunk(i);
                let key = u64::from_le_bytes(c.as_bytes()[..8].try_into().expect("8 bytes"));
                // The plain definition: sort by -w / ln(u), larger first, ties by index.
                let mut scored: Vec<(f64, usize)> = (0..layout.nodes.len())
                    .map(|n| {
                        let u =
                            ((mix(key ^ layout.seeds[n]) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                        (-layout.nodes[n].weight / u.ln(), n)
                    })
                    .collect();
                scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let plain: Vec<usize> = scored.into_iter().map(|(_, n)| n).collect();
                assert_eq!(layout.ranking(&c), plain);
                for rf in [1, 3, 5, 12] {
                    let usable = |n: usize| !(n + i as usize).is_multiple_of(3);
                    let order: Vec<usize> = plain.iter().copied().filter(|n| usable(*n)).collect();
                    assert_eq!(
                        layout.place_where(&c, rf, usable),
                        spread_by_full_scan(&layout, &order, rf)
                    );
                }
            }
        }
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
