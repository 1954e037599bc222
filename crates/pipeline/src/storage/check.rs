//! Checks and message helpers every backend's settings share: URLs, quoting a value for a message,
//! naming a character, reading a service's XML error body.

/// `http(s)://host[:port]`, then a path only when `path` says what it is for (`None`: no path).
pub fn url(url: &str, path: Option<&str>) -> Result<(), String> {
    let bad = |rule: &str| Err(format!("{} is not a valid endpoint URL: {rule}", quote(url)));
    if url.len() > 512 {
        return bad("it is longer than 512 characters");
    }
    let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) else {
        return bad("it must start with https:// or http://, such as https://storage.example.com");
    };
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return bad(&format!("it holds {}; remove it", describe_char(c)));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (authority, rest_path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() {
        return bad("it has no host");
    }
    let query = authority.contains(['?', '#']) || rest_path.contains(['?', '#']);
    if query && path.is_some() {
        return bad("it has a query or fragment; give only scheme, host, port and path");
    }
    if (query || !rest_path.is_empty()) && path.is_none() {
        return bad("it has a path or query; give only scheme, host and port (the bucket is set by the bucket field, \
             and requests use path style)");
    }
    if authority.contains('@') {
        return bad("it holds user information; credentials belong in the Secret");
    }
    let uri: http::Uri = url.parse().map_err(|e| format!("{} is not a valid endpoint URL: {e}", quote(url)))?;
    if uri.host().is_none_or(str::is_empty) {
        return bad("it has no host");
    }
    // A port is what follows the last colon after an IPv6 address's closing bracket.
    let after_host = &authority[authority.rfind(']').map_or(0, |i| i + 1)..];
    if after_host.contains(':') && uri.port_u16().is_none_or(|p| p == 0) {
        return bad("its port must be a number between 1 and 65535");
    }
    Ok(())
}

/// A value for a message: Debug-quoted (control characters escaped), and cut when very long.
pub(crate) fn quote(value: &str) -> String {
    let cut: String = value.chars().take(100).collect();
    if cut.len() < value.len() { format!("{cut:?}... ({} bytes)", value.len()) } else { format!("{cut:?}") }
}

pub(crate) fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".into(),
        '\n' | '\r' => "a line break".into(),
        '\t' => "a tab".into(),
        c if c.is_control() => format!("the control character {:?}", c),
        c if c.is_ascii_uppercase() => format!("the uppercase letter {c:?}"),
        c => format!("the character {c:?}"),
    }
}

/// S3, GCS and Azure errors carry an XML body such as `<Error><Code>NoSuchBucket</Code>...`.
pub(crate) fn xml_tag(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&format!("</{tag}>"))?;
    Some(text[start..start + len].to_owned())
}

/// A failed request as every backend classifies it: the code and first line of the message its body
/// carries ([`code_and_message`]), with the backend's `hint` for that code added in parentheses;
/// permanent for the codes in `permanent` (without a code a certificate problem is, connection
/// trouble is not).
pub(crate) fn classify(
    e: object_store::Error,
    permanent: &[&str],
    hint: impl FnOnce(&str, &str) -> Option<String>,
) -> super::Failure {
    let (code, message) = code_and_message(e);
    let message = message.lines().next().unwrap_or_default().to_owned();
    let permanent = match code.as_deref() {
        Some(code) => permanent.contains(&code),
        None => message.contains("certificate"),
    };
    let message = match code.as_deref().and_then(|code| hint(code, &message)) {
        Some(hint) => format!("{message} ({hint})"),
        None => message,
    };
    super::Failure { code, message, permanent }
}

/// The code and message of a failed request, as the service's XML body says them (with GCS's
/// `Details`, where it names the missing permission behind "Access denied."), else the root cause
/// (refused connection, bad certificate). object_store repeats itself down its source chain.
fn code_and_message(e: object_store::Error) -> (Option<String>, String) {
    let e = anyhow::Error::new(e);
    let full = format!("{e:#}");
    let code = xml_tag(&full, "Code");
    let message = match (xml_tag(&full, "Message"), xml_tag(&full, "Details")) {
        (Some(message), Some(details)) => format!("{message} {}", details.replace("&apos;", "'")),
        (Some(message), None) => message,
        (None, _) => {
            let causes: Vec<String> = e.chain().map(ToString::to_string).collect();
            causes[causes.len().saturating_sub(2)..].join(": ")
        }
    };
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_and_message_come_from_the_xml_body() {
        let text = "Client error with status 404: <?xml?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(xml_tag(text, "Code").as_deref(), Some("NoSuchBucket"));
        assert_eq!(xml_tag(text, "Message").as_deref(), Some("The specified bucket does not exist"));
        assert_eq!(xml_tag("no xml", "Code"), None);
    }

    #[test]
    fn urls_take_a_path_only_where_the_backend_has_one() {
        assert!(url("http://127.0.0.1:10000/devstoreaccount1", Some("the account")).is_ok());
        assert!(url("http://127.0.0.1:10000/devstoreaccount1", None).unwrap_err().contains("path"));
        assert!(url("https://storage.example.com/a?b", Some("x")).unwrap_err().contains("query"));
    }
}
