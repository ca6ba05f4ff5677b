//! What a chunk needs: the pure decision behind repair, rebalancing, trimming and `fsck`.
//!
//! Inputs: the layout of nodes that hold data (`placement::Layout`), what each node can do
//! now (`NodeView`), the chunk's factor and the nodes known to hold it. The chunk's place
//! is the layout's first `rf` choices; a node that is down but still in the layout (within
//! `repair_delay`, or in maintenance) keeps its place, so a reboot moves nothing. Output:
//! the chunk's risk, the copies to make (target, sources) and the surplus replicas to trim.
//!
//! Risks, most urgent first: one live replica left while another holder is down (repaired
//! at once, whatever the delay); below the factor; badly spread over failure domains; and
//! misplaced (the replicas are fine but not where the layout puts them: the rebalancer's
//! work, after a node was added).

use super::placement::Layout;
use crate::chunk::ChunkId;

/// What one layout node can do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeView {
    /// Serves reads (its agent is ready).
    pub live: bool,
    /// Takes new chunks (live, not draining, disk above its floor).
    pub usable: bool,
    /// Keeps its place in the layout: not out (down past `repair_delay` outside
    /// maintenance) and not draining.
    pub placed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Risk {
    /// One live replica left and a holder down: repaired at once.
    OneLive = 1,
    /// Fewer live replicas than the factor.
    BelowRf = 2,
    /// Enough replicas, in fewer zones or racks than the layout allows.
    BadlySpread = 3,
    /// Enough, well spread, but not where the layout puts them (rebalancing).
    Misplaced = 4,
}

impl Risk {
    pub fn name(&self) -> &'static str {
        match self {
            Risk::OneLive => "one-live-replica",
            Risk::BelowRf => "under-replicated",
            Risk::BadlySpread => "badly-spread",
            Risk::Misplaced => "misplaced",
        }
    }
}

/// One chunk's assessment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// Live replicas (holders that serve reads).
    pub live: usize,
    /// `None`: nothing to do.
    pub risk: Option<Risk>,
    /// Nodes to copy the chunk to (layout indices), most important first.
    pub copy_to: Vec<usize>,
    /// Live holders to copy from.
    pub sources: Vec<usize>,
    /// Live holders whose replica is surplus (every placed node holds it live).
    pub trim: Vec<usize>,
}

/// Assesses a chunk of factor `rf` held by `holders` (layout indices of the nodes known to
/// store it).
pub fn assess(
    layout: &Layout,
    nodes: &[NodeView],
    chunk: &ChunkId,
    rf: usize,
    holders: &[usize],
) -> Assessment {
    let live: Vec<usize> = holders.iter().copied().filter(|i| nodes[*i].live).collect();
    let placed = layout.place_where(chunk, rf, |i| nodes[i].placed);
    let down_holders = holders.iter().filter(|i| !nodes[**i].live).count();
    let mut copy_to = Vec::new();
    // The chunk's place first: each placed node that lacks it and can take it now. A placed
    // node that is down keeps its place (its copy comes back with it).
    for p in &placed {
        if !holders.contains(p) && nodes[*p].usable {
            copy_to.push(*p);
        }
    }
    let waiting_for = placed
        .iter()
        .filter(|p| !nodes[**p].live && holders.contains(p))
        .count();
    // Fewer live replicas than the factor, not counting those that come back with their
    // node: stand-ins from the rest of the order for places that cannot take it (full,
    // or down without a replica).
    let expected = live.len() + copy_to.len() + waiting_for;
    let one_live = live.len() == 1 && down_holders > 0;
    let mut want_extra = rf.saturating_sub(expected);
    if one_live && live.len() + copy_to.len() < 2 {
        // Do not wait for a node to come back when a single copy is left.
        want_extra = want_extra.max(2 - live.len() - copy_to.len());
    }
    if want_extra > 0 {
        for i in layout.ranking(chunk) {
            if want_extra == 0 {
                break;
            }
            if nodes[i].usable && !holders.contains(&i) && !copy_to.contains(&i) {
                copy_to.push(i);
                want_extra -= 1;
            }
        }
    }
    let all_placed_live = placed.iter().all(|p| nodes[*p].live && holders.contains(p));
    let trim: Vec<usize> = if all_placed_live && placed.len() == rf.min(layout.nodes().len()) {
        live.iter()
            .copied()
            .filter(|h| !placed.contains(h))
            .collect()
    } else {
        Vec::new()
    };
    let risk = if live.is_empty() {
        // Nothing to copy from: reported (missing or unavailable), never "repaired".
        Some(Risk::BelowRf)
    } else if one_live {
        Some(Risk::OneLive)
    } else if live.len() < rf.min(layout.nodes().len()) {
        Some(Risk::BelowRf)
    } else if !layout.well_spread(&live, rf) {
        Some(Risk::BadlySpread)
    } else if !copy_to.is_empty() || !trim.is_empty() {
        Some(Risk::Misplaced)
    } else {
        None
    };
    // Copies only once the chunk is short, or to move it where it belongs.
    let copy_to = if live.is_empty() { Vec::new() } else { copy_to };
    Assessment {
        live: live.len(),
        risk,
        copy_to,
        sources: live,
        trim,
    }
}

#[cfg(test)]
mod tests {
    use super::super::placement::LayoutNode;
    use super::*;

    fn layout(n: usize) -> Layout {
        Layout::new(
            (0..n)
                .map(|i| LayoutNode {
                    id: format!("n{i}"),
                    zone: String::new(),
                    rack: String::new(),
                    weight: 1.0,
                })
                .collect(),
        )
    }

    const OK: NodeView = NodeView {
        live: true,
        usable: true,
        placed: true,
    };
    /// Down, still in the layout (within repair_delay).
    const DOWN_WAITING: NodeView = NodeView {
        live: false,
        usable: false,
        placed: true,
    };
    /// Down past repair_delay: out of the layout.
    const OUT: NodeView = NodeView {
        live: false,
        usable: false,
        placed: false,
    };

    fn chunk(i: u32) -> ChunkId {
        ChunkId::of(&i.to_le_bytes())
    }

    #[test]
    fn a_healthy_chunk_needs_nothing_and_a_new_one_goes_to_its_place() {
        let l = layout(5);
        let nodes = vec![OK; 5];
        for i in 0..200 {
            let c = chunk(i);
            let placed = l.place(&c, 3);
            let a = assess(&l, &nodes, &c, 3, &placed);
            assert_eq!(a.risk, None, "{a:?}");
            assert!(a.copy_to.is_empty() && a.trim.is_empty());
        }
    }

    #[test]
    fn a_node_down_within_the_delay_moves_nothing_unless_one_copy_is_left() {
        let l = layout(5);
        for i in 0..200 {
            let c = chunk(i);
            let placed = l.place(&c, 3);
            let mut nodes = vec![OK; 5];
            nodes[placed[0]] = DOWN_WAITING;
            let a = assess(&l, &nodes, &c, 3, &placed);
            assert_eq!(a.risk, Some(Risk::BelowRf));
            assert!(a.copy_to.is_empty(), "waits for the node: {a:?}");
            // Two holders down: one live replica left, repaired at once to two live.
            nodes[placed[1]] = DOWN_WAITING;
            let a = assess(&l, &nodes, &c, 3, &placed);
            assert_eq!(a.risk, Some(Risk::OneLive));
            assert_eq!(a.copy_to.len(), 1, "{a:?}");
            assert!(!placed.contains(&a.copy_to[0]));
            assert_eq!(a.sources, vec![placed[2]]);
        }
    }

    #[test]
    fn a_node_out_of_the_layout_is_replaced_and_trimmed_when_it_returns() {
        let l = layout(5);
        for i in 0..200 {
            let c = chunk(i);
            let placed = l.place(&c, 3);
            let mut nodes = vec![OK; 5];
            nodes[placed[0]] = OUT;
            let a = assess(&l, &nodes, &c, 3, &placed);
            assert_eq!(a.risk, Some(Risk::BelowRf));
            assert_eq!(a.copy_to.len(), 1, "{a:?}");
            let stand_in = a.copy_to[0];
            assert!(!placed.contains(&stand_in));
            // Repaired: three live replicas, nothing more to do.
            let holders = vec![placed[0], placed[1], placed[2], stand_in];
            let a = assess(&l, &nodes, &c, 3, &holders);
            assert_eq!(a.risk, None, "{a:?}");
            // The node returns with its replica: the stand-in is surplus.
            let a = assess(&l, &[OK; 5], &c, 3, &holders);
            assert_eq!(a.trim, vec![stand_in]);
            assert_eq!(a.risk, Some(Risk::Misplaced));
        }
    }

    #[test]
    fn lost_everywhere_is_reported_and_full_nodes_get_stand_ins() {
        let l = layout(4);
        let c = chunk(7);
        let placed = l.place(&c, 3);
        let mut nodes = vec![OK; 4];
        for p in &placed {
            nodes[*p] = OUT;
        }
        let a = assess(&l, &nodes, &c, 3, &placed);
        assert_eq!((a.live, a.risk), (0, Some(Risk::BelowRf)));
        assert!(a.copy_to.is_empty(), "nothing to copy from");
        // A placed node that is full: the next in order stands in.
        let mut nodes = vec![OK; 4];
        nodes[placed[2]].usable = false;
        let a = assess(&l, &nodes, &c, 3, &placed[..2]);
        assert_eq!(a.copy_to.len(), 1);
        assert!(!placed.contains(&a.copy_to[0]));
    }
}
