//! The query parameters of list endpoints, as RabbitMQ's: `name` (substring, or a regex
//! with `use_regex=true`), `sort` (a field, dotted for nested ones such as
//! `message_stats.publish_details.rate`), `sort_reverse`, `page` and `page_size` (at most
//! 500; with `page` the reply is a page object), and `columns` (comma-separated fields to
//! keep).
//!
//! Rows are filtered and, when sorted by name or vhost (the default), sorted and paged
//! before they are rendered to JSON, so a page of 10,000 queues renders only its page.

use super::error::{ApiError, ApiResult};
use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::HashMap;

pub type Params = Query<HashMap<String, String>>;

const MAX_PAGE_SIZE: usize = 500;

pub struct ListParams {
    page: Option<usize>,
    page_size: usize,
    name: Option<Filter>,
    sort: Option<String>,
    sort_reverse: bool,
    columns: Option<Vec<String>>,
}

enum Filter {
    Substring(String),
    Regex(regex::Regex),
}

impl Filter {
    fn matches(&self, name: &str) -> bool {
        match self {
            Filter::Substring(s) => name.to_lowercase().contains(s.as_str()),
            Filter::Regex(r) => r.is_match(name),
        }
    }
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true")
}

/// RabbitMQ's answer to a page number or size that is not a number, or a bad regex.
fn invalid_pagination() -> ApiError {
    ApiError::bad_request("Pagination parameters are invalid")
}

impl ListParams {
    /// As RabbitMQ's management API: `name`, `use_regex`, `page_size` and the page object
    /// apply only when `page` is given; without it the whole sorted list comes back.
    /// Name matching is case-insensitive, as a substring or a regex.
    pub fn parse(q: &HashMap<String, String>) -> ApiResult<Self> {
        let num = |k: &str| -> ApiResult<Option<usize>> {
            q.get(k)
                .map(|v| v.parse::<usize>().map_err(|_| invalid_pagination()))
                .transpose()
        };
        let page = num("page")?;
        let mut page_size = 100;
        let mut name = None;
        if let Some(page) = page {
            let size = num("page_size")?;
            page_size = size.unwrap_or(100);
            if page == 0 || page_size == 0 || page_size > MAX_PAGE_SIZE {
                let size = size.map_or("undefined".to_string(), |s| s.to_string());
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_pagination_parameters",
                    format!("Invalid pagination parameters: page number {page}, page size {size}"),
                ));
            }
            name = match q.get("name").filter(|s| !s.is_empty()) {
                None => None,
                Some(n) if flag(q, "use_regex") => Some(Filter::Regex(
                    regex::RegexBuilder::new(n)
                        .case_insensitive(true)
                        .build()
                        .map_err(|_| invalid_pagination())?,
                )),
                Some(n) => Some(Filter::Substring(n.to_lowercase())),
            };
        }
        Ok(ListParams {
            page,
            page_size,
            name,
            sort: q.get("sort").filter(|s| !s.is_empty()).cloned(),
            sort_reverse: flag(q, "sort_reverse"),
            columns: q
                .get("columns")
                .filter(|s| !s.is_empty())
                .map(|c| c.split(',').map(|s| s.trim().to_string()).collect()),
        })
    }
}

/// Look up a dotted path in a JSON object.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (None | Some(Value::Null), None | Some(Value::Null)) => Ordering::Equal,
        (None | Some(Value::Null), _) => Ordering::Less,
        (_, None | Some(Value::Null)) => Ordering::Greater,
        (Some(x), Some(y)) => x.to_string().cmp(&y.to_string()),
    }
}

fn insert_path(m: &mut Map<String, Value>, parts: &[&str], v: Value) {
    match parts {
        [] => {}
        [last] => {
            m.insert(last.to_string(), v);
        }
        [first, rest @ ..] => {
            let entry = m
                .entry(first.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = entry {
                insert_path(inner, rest, v);
            }
        }
    }
}

/// Keep only the listed (possibly dotted) columns.
fn project(v: Value, columns: &[String]) -> Value {
    let mut out = Map::new();
    for c in columns {
        if let Some(found) = at(&v, c) {
            let parts: Vec<&str> = c.split('.').collect();
            insert_path(&mut out, &parts, found.clone());
        }
    }
    Value::Object(out)
}

/// A rendered list item: serialized as is, and asked for a field to sort on. The default
/// goes through a JSON value; row types override it for the fields sorted on often.
pub trait Row: Serialize {
    fn field(&self, path: &str) -> Option<Value> {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| at(&v, path).cloned())
    }
}

impl Row for Value {
    fn field(&self, path: &str) -> Option<Value> {
        at(self, path).cloned()
    }
}

#[derive(Serialize)]
struct Page<'a, R: Serialize> {
    filtered_count: usize,
    item_count: usize,
    items: &'a [R],
    page: usize,
    page_count: usize,
    page_size: usize,
    total_count: usize,
}

/// Filter, sort, page and render `rows`. `key` gives (vhost, name) of a row. Items are
/// serialized straight from their row type (no JSON tree) unless `columns` asks for a
/// projection.
pub fn respond<T, R: Row>(
    mut rows: Vec<T>,
    p: &ListParams,
    key: impl Fn(&T) -> (&str, &str),
    render: impl Fn(&T) -> R,
) -> ApiResult<Response> {
    let total = rows.len();
    if let Some(f) = &p.name {
        rows.retain(|r| f.matches(key(r).1));
    }
    let filtered = rows.len();
    let by_key = matches!(p.sort.as_deref(), None | Some("name" | "vhost"));
    let items: Vec<R> = if by_key {
        match p.sort.as_deref() {
            Some("name") => rows.sort_by(|a, b| key(a).1.cmp(key(b).1)),
            _ => rows.sort_by(|a, b| key(a).cmp(&key(b))),
        }
        if p.sort_reverse {
            rows.reverse();
        }
        let range = page_range(p, filtered)?;
        rows[range].iter().map(&render).collect()
    } else {
        let field = p.sort.as_deref().unwrap_or("name");
        let mut all: Vec<(Option<Value>, R)> = rows
            .iter()
            .map(|r| {
                let item = render(r);
                (item.field(field), item)
            })
            .collect();
        all.sort_by(|a, b| compare(a.0.as_ref(), b.0.as_ref()));
        if p.sort_reverse {
            all.reverse();
        }
        let range = page_range(p, filtered)?;
        all.drain(range).map(|(_, r)| r).collect()
    };
    match &p.columns {
        Some(cols) => {
            let projected: Vec<Value> = items
                .iter()
                .filter_map(|r| serde_json::to_value(r).ok())
                .map(|v| project(v, cols))
                .collect();
            json_response(p, &projected, filtered, total)
        }
        None => json_response(p, &items, filtered, total),
    }
}

fn json_response<R: Serialize>(
    p: &ListParams,
    items: &[R],
    filtered: usize,
    total: usize,
) -> ApiResult<Response> {
    let body = match p.page {
        None => serde_json::to_vec(items),
        Some(page) => serde_json::to_vec(&Page {
            filtered_count: filtered,
            item_count: items.len(),
            items,
            page,
            page_count: filtered.div_ceil(p.page_size),
            page_size: p.page_size,
            total_count: total,
        }),
    }
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn page_range(p: &ListParams, n: usize) -> ApiResult<std::ops::Range<usize>> {
    let Some(page) = p.page else { return Ok(0..n) };
    // The page just past the end is an empty page; further is out of range (RabbitMQ).
    let start = (page - 1).saturating_mul(p.page_size);
    if start > n {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "page_out_of_range",
            format!(
                "Page out of range, page: {page} page size: {}, len: {n}",
                p.page_size
            ),
        ));
    }
    Ok(start..(start + p.page_size).min(n))
}

/// Plain JSON values (no vhost/name fast path): filter on their `name` field.
pub fn respond_values(rows: Vec<Value>, p: &ListParams) -> ApiResult<Response> {
    let keyed: Vec<(String, String, Value)> = rows
        .into_iter()
        .map(|v| {
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            (s("vhost"), s("name"), v)
        })
        .collect();
    respond(keyed, p, |r| (r.0.as_str(), r.1.as_str()), |r| r.2.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(r: ApiResult<Response>) -> Value {
        let r = r.unwrap();
        let bytes = futures_body(r);
        serde_json::from_slice(&bytes).unwrap()
    }

    fn futures_body(r: Response) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec()
        })
    }

    fn params(q: &[(&str, &str)]) -> ListParams {
        let m = q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ListParams::parse(&m).unwrap()
    }

    #[test]
    fn pages_sorts_filters_and_projects() {
        let rows: Vec<Value> = (0..25)
            .map(|i| json!({"vhost": "/", "name": format!("q{i:02}"), "messages": 25 - i, "x": {"y": i}}))
            .collect();
        let v = body(respond_values(
            rows.clone(),
            &params(&[("page", "2"), ("page_size", "10")]),
        ));
        assert_eq!(v["page_count"], 3);
        assert_eq!(v["items"][0]["name"], "q10");
        let v = body(respond_values(
            rows.clone(),
            &params(&[("sort", "messages")]),
        ));
        assert_eq!(v[0]["name"], "q24");
        let v = body(respond_values(
            rows.clone(),
            &params(&[("page", "1"), ("name", "Q1"), ("columns", "name,x.y")]),
        ));
        assert_eq!(v["items"].as_array().unwrap().len(), 10);
        assert_eq!(v["items"][0], json!({"name": "q10", "x": {"y": 10}}));
        // Without a page, the name filter does not apply (RabbitMQ).
        let v = body(respond_values(rows.clone(), &params(&[("name", "q1")])));
        assert_eq!(v.as_array().unwrap().len(), 25);
        let m: HashMap<String, String> = [("page", "1"), ("page_size", "501")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        assert!(ListParams::parse(&m).is_err());
        // With 20 rows, page 3 of 10 starts just past the end: an empty page (lists:sublist
        // accepts len + 1); with 25 rows page 4 starts further out and is out of range.
        let v = body(respond_values(
            rows[..20].to_vec(),
            &params(&[("page", "3"), ("page_size", "10")]),
        ));
        assert_eq!(v["item_count"], 0);
        assert!(respond_values(rows, &params(&[("page", "4"), ("page_size", "10")])).is_err());
    }
}
