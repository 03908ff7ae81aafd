//! A typed client for cairn's Trove v1.0-compatible HTTP API.
//!
//! Why a module of its own: it is the only place that knows about HTTP, and
//! every way a request can go wrong ends here as one [`Error`] variant, so
//! the exit code a script sees is decided in one spot ([`Error::exit_code`]).
//! It also turns the names a user types into ids: the API only knows ids
//! (`GET /backups/<a name>` is a 404), so a name is looked up in the lists.

use std::{fmt, time::Duration};

use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use uuid::Uuid;

/// Everything that can go wrong talking to the API.
#[derive(Debug)]
pub enum Error {
    /// The object does not exist: a 404, or a name that nothing carries (exit 3).
    NotFound(String),
    /// The API refused the request: 400, 409, 422, a 5xx... (exit 1).
    Refused { status: StatusCode, message: String },
    /// Several objects carry the name the user gave (exit 1).
    Ambiguous { what: &'static str, name: String, ids: Vec<String> },
    /// Nothing answered: connection refused, or a timeout (exit 4).
    Unreachable(String),
    /// Something answered, but not the way the API does (exit 1).
    Protocol(String),
}

impl Error {
    /// The process exit code scripts can rely on (see the README).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotFound(_) => 3,
            Self::Unreachable(_) => 4,
            Self::Refused { .. } | Self::Ambiguous { .. } | Self::Protocol(_) => 1,
        }
    }

    fn from_reqwest(e: reqwest::Error, url: &Url) -> Self {
        if e.is_connect() || e.is_timeout() {
            let what = if e.is_timeout() { "timed out" } else { "connection failed" };
            Self::Unreachable(format!("cannot reach the cairn API at {}: {what}", origin(url)))
        } else {
            Self::Protocol(format!("request to {url} failed: {e}"))
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(m) | Self::Unreachable(m) | Self::Protocol(m) => f.write_str(m),
            Self::Refused { status, message } => write!(f, "{message} (HTTP {})", status.as_u16()),
            Self::Ambiguous { what, name, ids } => {
                write!(f, "more than one {what} is named {name:?}; use an id: {}", ids.join(", "))
            }
        }
    }
}

impl std::error::Error for Error {}

/// `scheme://host:port` of a URL, for messages.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The API of one project.
pub struct Client {
    http: reqwest::Client,
    /// `{url}/v1.0/{project}`.
    base: Url,
    /// How many backups to ask for per page.
    page: u64,
}

/// The most the API returns in one page of a list.
pub const MAX_PAGE: u64 = 1000;

impl Client {
    /// A client of `project` at `url`, sending `token` (if any) in
    /// X-Auth-Token, listing `page` backups per request.
    pub fn new(url: &Url, project: &str, token: Option<&str>, page: u64) -> Result<Self, Error> {
        let mut base = url.clone();
        base.path_segments_mut()
            .map_err(|()| Error::Protocol(format!("{url} cannot be a base URL")))?
            .pop_if_empty()
            .extend(["v1.0", project]);
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(token.trim())
                .map_err(|_| Error::Protocol("the token holds characters a header cannot carry".into()))?;
            value.set_sensitive(true);
            headers.insert("x-auth-token", value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Protocol(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self { http, base, page: page.clamp(1, MAX_PAGE) })
    }

    /// `{base}/{segments...}`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("checked in new()").extend(segments);
        url
    }

    /// Sends a request; the JSON body of a 2xx reply (`Null` when empty).
    async fn call(&self, method: Method, url: Url, body: Option<Value>) -> Result<Value, Error> {
        let mut req = self.http.request(method, url.clone()).header("accept", "application/json");
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| Error::from_reqwest(e, &url))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| Error::from_reqwest(e, &url))?;
        let parsed: Option<Value> = if text.trim().is_empty() { None } else { serde_json::from_str(&text).ok() };
        if status.is_success() {
            return match (parsed, text.trim().is_empty()) {
                (Some(v), _) => Ok(v),
                (None, true) => Ok(Value::Null),
                (None, false) => Err(Error::Protocol(format!("{url} answered {status} with a body that is not JSON"))),
            };
        }
        // Trove's fault shape: {"<faultName>": {"code": N, "message": "..."}}.
        let message = parsed
            .as_ref()
            .and_then(Value::as_object)
            .and_then(|o| o.values().find_map(|fault| fault.get("message")?.as_str().map(str::to_owned)))
            .unwrap_or_else(|| {
                let snippet: String = text.trim().chars().take(200).collect();
                if snippet.is_empty() { format!("{url} answered {status}") } else { snippet }
            });
        if status == StatusCode::NOT_FOUND {
            Err(Error::NotFound(message))
        } else {
            Err(Error::Refused { status, message })
        }
    }

    /// The object under `key` of a reply (`{"backup": {...}}` → `{...}`).
    fn unwrap_key(reply: Value, key: &str) -> Result<Value, Error> {
        match reply {
            Value::Object(mut o) if o.get(key).is_some_and(Value::is_object) => Ok(o.remove(key).unwrap_or_default()),
            other => Err(Error::Protocol(format!("expected a {key:?} object in the reply, got: {other}"))),
        }
    }

    pub async fn get_backup(&self, id: &str) -> Result<Value, Error> {
        Self::unwrap_key(self.call(Method::GET, self.url(&["backups", id]), None).await?, "backup")
    }

    /// Backups, newest first, following the `next` links until `limit`
    /// backups (all of them when `None`).
    pub async fn list_backups(&self, instance_id: Option<&str>, limit: Option<u64>) -> Result<Vec<Value>, Error> {
        let page = limit.map_or(self.page, |l| l.clamp(1, self.page));
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut url = self.url(&["backups"]);
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("limit", &page.to_string());
                if let Some(i) = instance_id {
                    q.append_pair("instance_id", i);
                }
                if let Some(m) = &marker {
                    q.append_pair("marker", m);
                }
            }
            let reply = self.call(Method::GET, url, None).await?;
            let Some(items) = reply.get("backups").and_then(Value::as_array) else {
                return Err(Error::Protocol(format!("expected a \"backups\" list in the reply, got: {reply}")));
            };
            out.extend(items.iter().cloned());
            if limit.is_some_and(|l| out.len() as u64 >= l) {
                out.truncate(limit.unwrap_or(0) as usize);
                return Ok(out);
            }
            // The next page is named by the `marker` of the `next` link; it is
            // asked of our own base URL, which is right behind a proxy too.
            let next = next_marker(&reply);
            match next {
                Some(m) if items.is_empty() || marker.as_ref() == Some(&m) => {
                    return Err(Error::Protocol(format!("the backup list does not advance past marker {m}")));
                }
                Some(m) => marker = Some(m),
                None => return Ok(out),
            }
        }
    }

    pub async fn create_backup(&self, body: Value) -> Result<Value, Error> {
        Self::unwrap_key(
            self.call(Method::POST, self.url(&["backups"]), Some(json!({ "backup": body }))).await?,
            "backup",
        )
    }

    pub async fn delete_backup(&self, id: &str) -> Result<(), Error> {
        self.call(Method::DELETE, self.url(&["backups", id]), None).await.map(drop)
    }

    pub async fn get_instance(&self, id: &str) -> Result<Value, Error> {
        Self::unwrap_key(self.call(Method::GET, self.url(&["instances", id]), None).await?, "instance")
    }

    pub async fn list_instances(&self) -> Result<Vec<Value>, Error> {
        let reply = self.call(Method::GET, self.url(&["instances"]), None).await?;
        match reply.get("instances").and_then(Value::as_array) {
            Some(items) => Ok(items.clone()),
            None => Err(Error::Protocol(format!("expected an \"instances\" list in the reply, got: {reply}"))),
        }
    }

    /// Registers a volume or restores a backup (`POST /instances`).
    pub async fn create_instance(&self, body: Value) -> Result<Value, Error> {
        let reply = self.call(Method::POST, self.url(&["instances"]), Some(json!({ "instance": body }))).await?;
        Self::unwrap_key(reply, "instance")
    }

    /// The id of the backup `key` names: an id is taken as is, a name is
    /// looked up among the backups of `instance_id` (all the project's when
    /// `None`) and must match exactly one.
    pub async fn backup_id(&self, key: &str, instance_id: Option<&str>) -> Result<String, Error> {
        if let Some(id) = as_id(key) {
            return Ok(id);
        }
        let all = self.list_backups(instance_id, None).await?;
        one_named("backup", key, &all)
    }

    /// The id of the instance `key` names (an id, or an exact name).
    pub async fn instance_id(&self, key: &str) -> Result<String, Error> {
        if let Some(id) = as_id(key) {
            return Ok(id);
        }
        let all = self.list_instances().await?;
        one_named("instance", key, &all)
    }
}

/// `Some(id)` when `key` is written as a UUID: ids are taken as ids.
fn as_id(key: &str) -> Option<String> {
    key.trim().parse::<Uuid>().ok().map(|u| u.to_string())
}

/// The id of the one object of `items` named `name`.
fn one_named(what: &'static str, name: &str, items: &[Value]) -> Result<String, Error> {
    let ids: Vec<String> = items
        .iter()
        .filter(|i| i.get("name").and_then(Value::as_str) == Some(name))
        .filter_map(|i| i.get("id").and_then(Value::as_str).map(str::to_owned))
        .collect();
    match ids.as_slice() {
        [] => Err(Error::NotFound(format!("no {what} has the name or id {name:?}"))),
        [id] => Ok(id.clone()),
        _ => Err(Error::Ambiguous { what, name: name.to_owned(), ids }),
    }
}

/// The `marker` of a list reply's `next` link, if there is one.
fn next_marker(reply: &Value) -> Option<String> {
    let links = reply.get("links")?.as_array()?;
    let href = links.iter().find(|l| l.get("rel").and_then(Value::as_str) == Some("next"))?.get("href")?.as_str()?;
    let url = Url::parse(href).ok()?;
    url.query_pairs().find(|(k, _)| k == "marker").map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_gets_version_and_project() {
        let c = Client::new(&Url::parse("http://h:1/").unwrap(), "p1", None, MAX_PAGE).unwrap();
        assert_eq!(c.url(&["backups", "x"]).as_str(), "http://h:1/v1.0/p1/backups/x");
        let c = Client::new(&Url::parse("http://h:1/prefix").unwrap(), "p1", None, MAX_PAGE).unwrap();
        assert_eq!(c.url(&["instances"]).as_str(), "http://h:1/prefix/v1.0/p1/instances");
    }

    #[test]
    fn names_resolve_to_one_id() {
        let items = vec![
            json!({"id": "a", "name": "full"}),
            json!({"id": "b", "name": "inc"}),
            json!({"id": "c", "name": "inc"}),
        ];
        assert_eq!(one_named("backup", "full", &items).unwrap(), "a");
        assert!(matches!(one_named("backup", "nope", &items), Err(Error::NotFound(_))));
        let err = one_named("backup", "inc", &items).unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("b, c"), "{err}");
    }

    #[test]
    fn next_marker_is_read_from_the_link() {
        let reply =
            json!({"backups": [], "links": [{"rel": "next", "href": "http://x/v1.0/p/backups?limit=2&marker=m1"}]});
        assert_eq!(next_marker(&reply).as_deref(), Some("m1"));
        assert_eq!(next_marker(&json!({"backups": []})), None);
    }
}
