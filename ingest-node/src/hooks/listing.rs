//! What a media server lists as published, read from its API: nginx-rtmp's
//! `rtmp_stat` XML, SRS's `/api/v1/streams`, MediaMTX's `/v3/paths/list`,
//! OvenMediaEngine's `/v1/vhosts/VHOST/apps/APP/streams` (one application
//! per sidecar; its name is taken from that URL). Each is parsed to
//! `(broadcast, client)` pairs, the client as that server's hooks name it
//! (empty where the list does not say: any publisher of the broadcast), so
//! a sidecar that restarted, or missed a hook, converges to what the server
//! really has.
//!
//! A listing releases the claims of what it does not show, so it must be
//! complete: SRS lists 10 streams and MediaMTX 100 paths unless asked for
//! more. The reader asks for [`Page::asked`] at once and a page is
//! [`Page::complete`] only when the server's own counts say nothing was
//! left out; otherwise it asks again for more, and a listing never known to
//! be complete is an error (it releases nothing).

use crate::error::{Error, Result};
use quick_xml::events::Event;
use quick_xml::Reader;
use serde::Deserialize;

use super::Kind;

/// Publishers the server lists: `(broadcast, client)`.
pub type Listed = Vec<(String, String)>;

/// One answer of the server's API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub listed: Listed,
    /// The server's counts say this is everything it has.
    pub complete: bool,
    /// Players of each broadcast, where the server counts them (SRS,
    /// MediaMTX): how the sidecar knows a relay it runs has nobody left.
    pub readers: std::collections::HashMap<String, usize>,
}

/// How many items a first request asks for.
pub const FIRST_ASK: usize = 1000;
/// The most a request asks for before the listing is called incomplete.
pub const MOST_ASKED: usize = 1 << 20;

/// The URL that asks the server at `base` for `asked` items at once.
pub fn url(kind: Kind, base: &str, asked: usize) -> String {
    let param = match kind {
        Kind::Srs => format!("start=0&count={asked}"),
        Kind::Mediamtx => format!("page=0&itemsPerPage={asked}"),
        Kind::NginxRtmp | Kind::Ome => return base.to_string(),
    };
    let join = if base.contains('?') { '&' } else { '?' };
    format!("{base}{join}{param}")
}

/// The publishers listed in `body`, read from `url` asking for `asked`.
pub fn parse(kind: Kind, url: &str, body: &[u8], asked: usize) -> Result<Page> {
    match kind {
        Kind::NginxRtmp => nginx(body).map(whole),
        Kind::Srs => srs(body, asked),
        Kind::Mediamtx => mediamtx(body),
        Kind::Ome => ome(url, body).map(whole),
    }
}

/// A listing that is the whole by its nature (no paging).
fn whole(listed: Listed) -> Page {
    Page {
        listed,
        complete: true,
        readers: Default::default(),
    }
}

#[derive(Deserialize)]
struct OmeStreams {
    #[serde(default)]
    response: Vec<String>,
}

/// OME's stream names of the application its URL names
/// (`.../apps/APP/streams`); OME's admission hooks name a publisher by its
/// address, the list does not: any publisher of a listed stream is there.
fn ome(url: &str, body: &[u8]) -> Result<Listed> {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let mut segments = path.split('/');
    let app = segments
        .by_ref()
        .skip_while(|s| *s != "apps")
        .nth(1)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            Error::Config(format!("--media-server-api {url:?} names no application (…/v1/vhosts/VHOST/apps/APP/streams)"))
        })?;
    let s: OmeStreams = serde_json::from_slice(body)
        .map_err(|e| Error::Unreadable(format!("not OME's stream list: {e}")))?;
    Ok(s.response
        .into_iter()
        .map(|name| (format!("{app}/{name}"), String::new()))
        .collect())
}

/// nginx-rtmp's `rtmp_stat all` XML: every publishing client of every
/// stream of every application, but not the relays pulling from an owner
/// (their address is the upstream's `HOST:PORT/app/name`).
fn nginx(body: &[u8]) -> Result<Listed> {
    let mut reader = Reader::from_reader(body);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let (mut app, mut stream) = (String::new(), String::new());
    let (mut id, mut address, mut publishing) = (String::new(), String::new(), false);
    let mut listed = Vec::new();
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| Error::Unreadable(format!("not nginx-rtmp's stat XML: {e}")))?;
        match event {
            Event::Start(e) => {
                if e.name().as_ref() == b"client" {
                    (id, address, publishing) = (String::new(), String::new(), false);
                }
                path.push(e.name().as_ref().to_vec());
            }
            Event::Empty(e)
                if e.name().as_ref() == b"publishing"
                    && path.last().is_some_and(|p| p == b"client") =>
            {
                publishing = true;
            }
            Event::Text(t) => {
                let text = t
                    .unescape()
                    .map_err(|e| {
                        Error::Unreadable(format!("bad text in nginx-rtmp's stat XML: {e}"))
                    })?
                    .to_string();
                let n = path.len();
                let (parent, leaf) = match n {
                    0 | 1 => continue,
                    _ => (path[n - 2].as_slice(), path[n - 1].as_slice()),
                };
                match (parent, leaf) {
                    (b"application", b"name") => app = text,
                    (b"stream", b"name") => stream = text,
                    (b"client", b"id") => id = text,
                    (b"client", b"address") => address = text,
                    _ => {}
                }
            }
            Event::End(e) => {
                if e.name().as_ref() == b"client" && publishing && !address.contains('/') {
                    listed.push((format!("{app}/{stream}"), id.clone()));
                }
                path.pop();
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(listed)
}

#[derive(Deserialize)]
struct SrsStreams {
    code: i64,
    #[serde(default)]
    streams: Vec<SrsStream>,
}

#[derive(Deserialize)]
struct SrsStream {
    app: String,
    name: String,
    /// Its publisher and its players.
    #[serde(default)]
    clients: usize,
    #[serde(default)]
    publish: Option<SrsPublish>,
}

#[derive(Deserialize)]
struct SrsPublish {
    active: bool,
    #[serde(default)]
    cid: String,
}

/// SRS answers at most `count` streams (10 unless asked): fewer than
/// asked is all of them.
fn srs(body: &[u8], asked: usize) -> Result<Page> {
    let s: SrsStreams = serde_json::from_slice(body)
        .map_err(|e| Error::Unreadable(format!("not SRS's stream list: {e}")))?;
    if s.code != 0 {
        return Err(Error::media_server(format!(
            "SRS's stream list answered code {}",
            s.code
        )));
    }
    let complete = s.streams.len() < asked;
    let mut readers = std::collections::HashMap::new();
    let listed = s
        .streams
        .into_iter()
        .filter_map(|st| {
            let p = st.publish.filter(|p| p.active)?;
            let broadcast = format!("{}/{}", st.app, st.name);
            readers.insert(broadcast.clone(), st.clients.saturating_sub(1));
            Some((broadcast, p.cid))
        })
        .collect();
    Ok(Page {
        listed,
        complete,
        readers,
    })
}

#[derive(Deserialize)]
struct MtxPaths {
    #[serde(rename = "itemCount")]
    item_count: usize,
    #[serde(rename = "pageCount")]
    page_count: usize,
    #[serde(default)]
    items: Vec<MtxPath>,
}

#[derive(Deserialize)]
struct MtxPath {
    name: String,
    #[serde(default)]
    source: Option<MtxSource>,
    #[serde(default)]
    readers: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct MtxSource {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    id: String,
}

impl MtxSource {
    /// A publisher (`rtmpConn`, `rtspSession`, `srtConn`,
    /// `webRTCSession`, ...), not a source MediaMTX pulls itself
    /// (`rtmpSource`, `rtspSource`, ...): a pull is never claimed.
    fn publishes(&self) -> bool {
        self.kind.ends_with("Conn") || self.kind.ends_with("Session")
    }
}

/// A path with a publishing source has a publisher (ready, or just let in
/// and not ready yet); the source's id is the one MediaMTX's
/// authentication request and `$MTX_SOURCE_ID` carry. Complete when one
/// page holds every item.
fn mediamtx(body: &[u8]) -> Result<Page> {
    let p: MtxPaths = serde_json::from_slice(body)
        .map_err(|e| Error::Unreadable(format!("not MediaMTX's path list: {e}")))?;
    let complete = p.page_count <= 1 && p.items.len() == p.item_count;
    let mut readers = std::collections::HashMap::new();
    let listed = p
        .items
        .into_iter()
        .filter_map(|p| {
            let source = p.source.filter(MtxSource::publishes)?;
            readers.insert(p.name.clone(), p.readers.len());
            Some((p.name, source.id))
        })
        .collect();
    Ok(Page {
        listed,
        complete,
        readers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(page: Page) -> Listed {
        page.listed
    }

    #[test]
    fn nginx_stat_lists_publishers_not_players_or_relays() {
        let xml = br#"<?xml version="1.0" encoding="utf-8" ?>
<rtmp><nginx_version>1.22.1</nginx_version><server><application><name>live</name><live>
<stream><name>cam1</name><time>5000</time>
 <client><id>5</id><address>127.0.0.1</address><time>5000</time><flashver>FMLE/3.0</flashver><dropped>0</dropped><avsync>0</avsync><timestamp>4960</timestamp><publishing/><active/></client>
 <client><id>9</id><address>10.0.0.2</address><time>100</time><flashver>LNX 9,0,124,2</flashver><dropped>0</dropped><timestamp>4960</timestamp><active/></client>
 <meta><video><width>320</width></video></meta><nclients>2</nclients><publishing/><active/></stream>
<stream><name>relayed</name>
 <client><id>11</id><address>127.0.0.1:19350/live/relayed</address><flashver>ngx-local-relay</flashver><publishing/><active/></client>
</stream>
<nclients>3</nclients></live></application></server></rtmp>"#;
        let page = parse(Kind::NginxRtmp, "", xml, FIRST_ASK).unwrap();
        assert!(page.complete);
        assert_eq!(
            page.listed,
            vec![("live/cam1".to_string(), "5".to_string())]
        );
        assert!(parse(Kind::NginxRtmp, "", b"<rtmp><server><", FIRST_ASK).is_err());
    }

    // Bodies as SRS 6.0.157 and MediaMTX 1.12.2 answered them.
    const SRS: &[u8] = br#"{"code":0,"server":"vid-y9807az","service":"687544d0","pid":"8752","streams":[
      {"id":"vid-06a07fg","name":"cam1","vhost":"vid-32121w0","app":"live","tcUrl":"rtmp://127.0.0.1:18935/live","url":"/live/cam1","live_ms":1796628319757,"clients":1,"frames":0,"send_bytes":4386,"recv_bytes":69817,"kbps":{"recv_30s":0,"send_30s":0},"publish":{"active":true,"cid":"191f2g5s"},"video":{"codec":"H264","profile":"Other","level":"1.3","width":320,"height":240},"audio":{"codec":"AAC","sample_rate":44100,"channel":2,"profile":"LC"}},
      {"id":"vid-2","name":"gone","vhost":"v","app":"live","publish":{"active":false,"cid":""}}]}"#;
    const MTX: &[u8] = br#"{"itemCount":3,"pageCount":1,"items":[
      {"name":"live/cam1","confName":"all_others","source":{"type":"rtmpConn","id":"f1d9d10f-1296-44bb-8752-f354bdf0f8fa"},"ready":true,"readyTime":"2026-12-07T07:25:18.053942304Z","tracks":["H264","MPEG-4 Audio"],"bytesReceived":63677,"bytesSent":0,"readers":[]},
      {"name":"live/rtspcam","confName":"all_others","source":{"type":"rtspSession","id":"ba338398-9316-42ef-82be-9c9f9f6b5846"},"ready":false,"readyTime":null,"tracks":[],"bytesReceived":0,"bytesSent":0,"readers":[]},
      {"name":"live/idle","confName":"all_others","source":null,"ready":false,"readyTime":null,"tracks":[],"bytesReceived":0,"bytesSent":0,"readers":[]},
      {"name":"live/pulled","confName":"live/pulled","source":{"type":"rtmpSource","id":""},"ready":true,"readyTime":null,"tracks":[],"bytesReceived":0,"bytesSent":0,"readers":[]}]}"#;

    #[test]
    fn srs_and_mediamtx_lists_as_the_servers_answer() {
        assert_eq!(
            listed(parse(Kind::Srs, "", SRS, FIRST_ASK).unwrap()),
            vec![("live/cam1".to_string(), "191f2g5s".to_string())]
        );
        assert_eq!(
            listed(parse(Kind::Mediamtx, "", MTX, FIRST_ASK).unwrap()),
            vec![
                (
                    "live/cam1".to_string(),
                    "f1d9d10f-1296-44bb-8752-f354bdf0f8fa".to_string()
                ),
                (
                    "live/rtspcam".to_string(),
                    "ba338398-9316-42ef-82be-9c9f9f6b5846".to_string()
                )
            ]
        );
        assert!(parse(Kind::Srs, "", br#"{"code":1001}"#, FIRST_ASK).is_err());
        // SRS counts the publisher among its clients; MediaMTX lists readers.
        let srs = parse(Kind::Srs, "", SRS, FIRST_ASK).unwrap();
        assert_eq!(srs.readers.get("live/cam1"), Some(&0));
        let mtx = parse(Kind::Mediamtx, "", MTX, FIRST_ASK).unwrap();
        assert_eq!(mtx.readers.get("live/cam1"), Some(&0));
        // OME's answer to GET /v1/vhosts/default/apps/live/streams.
        let ome = br#"{"message":"OK","response":["stream","stream2"],"statusCode":200}"#;
        let url = "http://ome:8081/v1/vhosts/default/apps/app/streams";
        assert_eq!(
            listed(parse(Kind::Ome, url, ome, FIRST_ASK).unwrap()),
            vec![
                ("app/stream".to_string(), String::new()),
                ("app/stream2".to_string(), String::new())
            ]
        );
        assert!(parse(Kind::Ome, "http://ome:8081/v1/vhosts", ome, FIRST_ASK).is_err());
    }

    #[test]
    fn a_listing_is_complete_only_when_the_server_says_nothing_was_left_out() {
        // SRS answered as many streams as asked: there may be more.
        assert!(!parse(Kind::Srs, "", SRS, 2).unwrap().complete);
        assert!(parse(Kind::Srs, "", SRS, 3).unwrap().complete);
        // MediaMTX says how many items and pages there are.
        let mtx = String::from_utf8_lossy(MTX).replace(r#""itemCount":3"#, r#""itemCount":4"#);
        assert!(
            parse(Kind::Mediamtx, "", mtx.as_bytes(), FIRST_ASK)
                .unwrap()
                .complete
        );
        assert!(!parse(Kind::Mediamtx, "", MTX, FIRST_ASK).unwrap().complete);
        let paged = br#"{"itemCount":101,"pageCount":2,"items":[]}"#;
        assert!(!parse(Kind::Mediamtx, "", paged, 100).unwrap().complete);
        let short = br#"{"itemCount":2,"pageCount":1,"items":[{"name":"a/b","source":null}]}"#;
        assert!(!parse(Kind::Mediamtx, "", short, 100).unwrap().complete);
        // Asking for everything at once, whatever the user's URL holds.
        assert_eq!(
            url(Kind::Srs, "http://h:1985/api/v1/streams", 1000),
            "http://h:1985/api/v1/streams?start=0&count=1000"
        );
        assert_eq!(
            url(Kind::Mediamtx, "http://h:9997/v3/paths/list?x=1", 5),
            "http://h:9997/v3/paths/list?x=1&page=0&itemsPerPage=5"
        );
        assert_eq!(url(Kind::Ome, "http://h/v1/x", 5), "http://h/v1/x");
    }
}
