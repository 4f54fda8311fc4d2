//! How an error answer of ClickHouse's HTTP interface is read, for every
//! stage that calls it (the sink's inserts and look-ups, the alert store):
//! the server's error code, and whether a retry can help.
//!
//! In: a `clickhouse` crate error, whose `BadResponse` holds the answer's
//! text (the server's body, or `NNN Reason` for an empty one; the sink's
//! own look-up reports `NNN Reason body` the same way). Out:
//! [`Classified`], its text, the server's code and whether a retry can
//! help, the same for every crate that calls ClickHouse.

/// A failed ClickHouse call, read.
#[derive(Debug)]
pub struct Classified {
    pub message: String,
    /// The server's error code, when it answered one.
    pub code: Option<u32>,
    /// Whether the same call later can succeed: network trouble, a server
    /// error in [`TRANSIENT_CODES`], or an answer without a code whose
    /// status passes ([`codeless_answer_is_transient`]).
    pub transient: bool,
}

/// Reads a client error: its code, and whether to retry.
pub fn classify(e: &clickhouse::error::Error) -> Classified {
    use clickhouse::error::Error as E;
    let message = e.to_string();
    let code = server_code(&message);
    let transient = match (e, code) {
        (E::Network(_) | E::TimedOut, _) => true,
        (_, Some(c)) => TRANSIENT_CODES.contains(&c),
        (E::BadResponse(answer), None) => codeless_answer_is_transient(answer),
        _ => false,
    };
    Classified {
        message,
        code,
        transient,
    }
}

/// Server errors that pass: timeouts, overload, memory, too many parts,
/// read-only replicas, an insert of unknown status.
pub const TRANSIENT_CODES: &[u32] = &[159, 202, 203, 209, 210, 241, 242, 252, 285, 319, 425, 999];

/// The server's error code (`Code: N` in its answer), when there is one.
///
/// The `clickhouse` crate (0.15) has no structured code: its
/// `Error::BadResponse(String)` holds the server's answer body, which
/// starts `Code: N. DB::Exception: …` (or, on servers as old as 18.16,
/// carries `Code: N, e.displayText() = …`), and only when the body is empty
/// or unreadable does it fall back to the `X-ClickHouse-Exception-Code`
/// header, formatted into the same `Code: N` text.
pub fn server_code(answer: &str) -> Option<u32> {
    let rest = &answer[answer.find("Code: ")? + 6..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Whether an error answer without a server code is worth retrying.
///
/// ClickHouse answers its query errors with their code; what comes without
/// one is mostly something in between, a proxy or load balancer, or the
/// server's HTTP layer before a query ran. By the HTTP status where it can
/// be read (the answer starting `NNN `, or an HTML page's `<title>NNN` or
/// `<h1>NNN`; the `clickhouse` crate keeps the status only for an empty
/// body):
/// 5xx, 408 and 429 pass (a server restarting behind a proxy, an overload,
/// a shutdown), any other status does not (a proxy refusing the user, a
/// body over the proxy's size limit, a wrong path). With no status to read,
/// retried, except ClickHouse's own answer to a path it has no handler for.
pub fn codeless_answer_is_transient(answer: &str) -> bool {
    let answer = answer.trim();
    match leading_status(answer).or_else(|| title_status(answer)) {
        Some(status) => status >= 500 || status == 408 || status == 429,
        None => !answer.starts_with("There is no handle"),
    }
}

/// `NNN` at the start of `s`, followed by nothing or white space.
fn leading_status(s: &str) -> Option<u16> {
    let digits = s.get(..3)?;
    if !digits.bytes().all(|b| b.is_ascii_digit())
        || s[3..].chars().next().is_some_and(|c| !c.is_whitespace())
    {
        return None;
    }
    digits.parse().ok().filter(|s| (100..600).contains(s))
}

/// The status at the start of an HTML page's title, or of its first
/// heading (HAProxy's pages have no title). Lower-cased in ASCII only, so
/// that an offset in the copy is one in `s`.
fn title_status(s: &str) -> Option<u16> {
    let lower = s.to_ascii_lowercase();
    ["<title>", "<h1>"].iter().find_map(|tag| {
        let at = lower.find(tag)? + tag.len();
        leading_status(s[at..].trim_start())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_found_in_every_form_of_answer() {
        let table = [
            // A current server's body.
            (
                "Code: 395. DB::Exception: Value passed to 'throwIf' function is non zero. (FUNCTION_THROW_IF_VALUE_IS_NON_ZERO)",
                Some(395),
            ),
            // ClickHouse 18.16's body.
            (
                "Code: 60, e.displayText() = DB::Exception: Table x.events doesn't exist.",
                Some(60),
            ),
            // An empty body: the client formats the header.
            ("Code: 241", Some(241)),
            // No code at all.
            ("502 Bad Gateway", None),
            ("connection reset", None),
            ("Code: ", None),
        ];
        for (answer, code) in table {
            assert_eq!(server_code(answer), code, "{answer}");
        }
    }

    #[test]
    fn answers_without_a_code_pass_by_their_status() {
        let nginx = |status: &str| {
            format!(
                "<html>\r\n<head><title>{status}</title></head>\r\n<body>\r\n<center><h1>{status}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>"
            )
        };
        let table = [
            // The crate's text for an empty body, and the look-up's own.
            ("502 Bad Gateway", true),
            ("503 Service Unavailable", true),
            ("504 Gateway Timeout", true),
            ("429 Too Many Requests", true),
            ("408 Request Timeout", true),
            ("400 Bad Request", false),
            ("403 Forbidden user is not allowed", false),
            ("500 Internal Server Error", true),
            (&nginx("503 Service Temporarily Unavailable"), true),
            (&nginx("413 Request Entity Too Large"), false),
            // HAProxy's page: a heading, no title.
            (
                "<html><body><h1>403 Forbidden</h1>\nRequest forbidden by administrative rules.\n</body></html>",
                false,
            ),
            (
                "<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>",
                true,
            ),
            ("502\r\n", true),
            // No status to read: a proxy's own words (retried), and
            // ClickHouse's answer to a path it does not serve (not).
            ("cannot reach 127.0.0.1:8123", true),
            (
                "There is no handle /clickhouse\n\nUse / or /ping for health checks.",
                false,
            ),
            // Digits that are not a status.
            ("5023 rows", true),
            ("999 bottles", true),
        ];
        for (answer, transient) in table {
            assert_eq!(codeless_answer_is_transient(answer), transient, "{answer}");
        }
    }
}
