//! What a media server lists as published, read from its API: nginx-rtmp's
//! `rtmp_stat` XML, SRS's `/api/v1/streams`, MediaMTX's `/v3/paths/list`,
//! OvenMediaEngine's `/v1/vhosts/VHOST/apps/APP/streams` (one application
//! per sidecar; its name is taken from that URL). Each is parsed to
//! `(broadcast, client)` pairs, the client as that server's hooks name it
//! (empty where the list does not say: any publisher of the broadcast), so
//! a sidecar that restarted, or missed a hook, converges to what the server
//! really has.

use quick_xml::events::Event;
use quick_xml::Reader;
use serde::Deserialize;

use super::Kind;

/// Publishers the server lists: `(broadcast, client)`.
pub type Listed = Vec<(String, String)>;

/// The publishers listed in `body`, read from `url`.
pub fn parse(kind: Kind, url: &str, body: &[u8]) -> Result<Listed, String> {
    match kind {
        Kind::NginxRtmp => nginx(body),
        Kind::Srs => srs(body),
        Kind::Mediamtx => mediamtx(body),
        Kind::Ome => ome(url, body),
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
fn ome(url: &str, body: &[u8]) -> Result<Listed, String> {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let mut segments = path.split('/');
    let app = segments
        .by_ref()
        .skip_while(|s| *s != "apps")
        .nth(1)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            format!("--media-server-api {url:?} names no application (…/v1/vhosts/VHOST/apps/APP/streams)")
        })?;
    let s: OmeStreams =
        serde_json::from_slice(body).map_err(|e| format!("not OME's stream list: {e}"))?;
    Ok(s.response
        .into_iter()
        .map(|name| (format!("{app}/{name}"), String::new()))
        .collect())
}

/// nginx-rtmp's `rtmp_stat all` XML: every publishing client of every
/// stream of every application, but not the relays pulling from an owner
/// (their address is the upstream's `HOST:PORT/app/name`).
fn nginx(body: &[u8]) -> Result<Listed, String> {
    let mut reader = Reader::from_reader(body);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let (mut app, mut stream) = (String::new(), String::new());
    let (mut id, mut address, mut publishing) = (String::new(), String::new(), false);
    let mut listed = Vec::new();
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("not nginx-rtmp's stat XML: {e}"))?;
        match event {
            Event::Start(e) => {
                if e.name().as_ref() == b"client" {
                    (id, address, publishing) = (String::new(), String::new(), false);
                }
                path.push(e.name().as_ref().to_vec());
            }
            Event::Empty(e) => {
                if e.name().as_ref() == b"publishing" && path.last().is_some_and(|p| p == b"client")
                {
                    publishing = true;
                }
            }
            Event::Text(t) => {
                let text = t
                    .unescape()
                    .map_err(|e| format!("bad text in nginx-rtmp's stat XML: {e}"))?
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
    #[serde(default)]
    streams: Vec<SrsStream>,
}

#[derive(Deserialize)]
struct SrsStream {
    app: String,
    name: String,
    #[serde(default)]
    publish: Option<SrsPublish>,
}

#[derive(Deserialize)]
struct SrsPublish {
    active: bool,
    #[serde(default)]
    cid: String,
}

fn srs(body: &[u8]) -> Result<Listed, String> {
    let s: SrsStreams =
        serde_json::from_slice(body).map_err(|e| format!("not SRS's stream list: {e}"))?;
    Ok(s.streams
        .into_iter()
        .filter_map(|st| {
            let p = st.publish.filter(|p| p.active)?;
            Some((format!("{}/{}", st.app, st.name), p.cid))
        })
        .collect())
}

#[derive(Deserialize)]
struct MtxPaths {
    #[serde(default)]
    items: Vec<MtxPath>,
}

#[derive(Deserialize)]
struct MtxPath {
    name: String,
    #[serde(default)]
    ready: bool,
}

fn mediamtx(body: &[u8]) -> Result<Listed, String> {
    let p: MtxPaths =
        serde_json::from_slice(body).map_err(|e| format!("not MediaMTX's path list: {e}"))?;
    Ok(p.items
        .into_iter()
        .filter(|p| p.ready)
        .map(|p| (p.name, String::new()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            parse(Kind::NginxRtmp, "", xml).unwrap(),
            vec![("live/cam1".to_string(), "5".to_string())]
        );
        assert!(parse(Kind::NginxRtmp, "", b"<rtmp><server><").is_err());
    }

    #[test]
    fn srs_and_mediamtx_lists_from_their_documentation() {
        let srs_body = br#"{"code":0,"server":"vid-0xk989d","streams":[
          {"id":"vid-124q9y3","name":"livestream","vhost":"vid-0xk989d","app":"live","url":"/live/livestream","clients":1,
           "publish":{"active":true,"cid":"341w361a"},"video":null,"audio":null},
          {"id":"vid-2","name":"gone","vhost":"v","app":"live","publish":{"active":false,"cid":""}}]}"#;
        assert_eq!(
            parse(Kind::Srs, "", srs_body).unwrap(),
            vec![("live/livestream".to_string(), "341w361a".to_string())]
        );
        let mtx = br#"{"itemCount":2,"pageCount":1,"items":[
          {"name":"live/cam1","confName":"all_others","source":{"type":"rtmpConn","id":"9f3c"},"ready":true,"tracks":["H264"]},
          {"name":"live/idle","confName":"all_others","source":null,"ready":false,"tracks":[]}]}"#;
        assert_eq!(
            parse(Kind::Mediamtx, "", mtx).unwrap(),
            vec![("live/cam1".to_string(), String::new())]
        );
        // OME's REST API documentation: GET /v1/vhosts/{vhost}/apps/{app}/streams.
        let ome = br#"{"message":"OK","response":["stream","stream2"],"statusCode":200}"#;
        let url = "http://ome:8081/v1/vhosts/default/apps/app/streams";
        assert_eq!(
            parse(Kind::Ome, url, ome).unwrap(),
            vec![
                ("app/stream".to_string(), String::new()),
                ("app/stream2".to_string(), String::new())
            ]
        );
        assert!(parse(Kind::Ome, "http://ome:8081/v1/vhosts", ome).is_err());
    }
}
