//! Domain-name helpers shared by layers that must not import each other (`dnssec` sits below
//! `zone` and `snapshot`, which use it; all three need a name's wire form).

/// Returns the lowercase wire form of a domain name written in ASCII (`api.example.net.`);
/// `None` when it is not a valid name.
pub(crate) fn name_to_wire(name: &str) -> Option<Vec<u8>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut wire = Vec::with_capacity(name.len() + 2);
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            wire.push(label.len() as u8);
            wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    wire.push(0);
    (wire.len() <= 255).then_some(wire)
}
