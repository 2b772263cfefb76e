//! Helpers shared by the head fuzz targets, written independently of certgate's parser.

/// Header lines of a well-formed head (split naively on CRLF, independent of httparse), each
/// without its CRLF; the start line is skipped, the blank line ends the list.
pub fn header_lines(head: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut rest = head;
    let mut first = true;
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        let line = &rest[..pos];
        rest = &rest[pos + 2..];
        if first {
            first = false;
            continue;
        }
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    lines
}
