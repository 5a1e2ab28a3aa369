//! The media of broadcasts published on this node, fanned out to viewers.
//!
//! A packet from a publisher becomes one FLV tag (`Bytes`) shared by every
//! viewer: cloning it is a reference count. Each viewer has a bounded queue;
//! a viewer whose queue is full is dropped, so a slow viewer costs only
//! itself and never stalls the publisher or the others. A new viewer gets the
//! codec sequence headers first, then the group of pictures since the latest
//! keyframe, then live packets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::flv;

/// Tags a viewer may have queued before it is dropped (about half a minute
/// of audio and video at common rates).
pub const VIEWER_QUEUE: usize = 2048;
/// A group of pictures larger than this is not cached; new viewers then
/// start at the next keyframe.
const MAX_GOP_BYTES: usize = 32 * 1024 * 1024;

#[derive(Default)]
struct State {
    video_header: Option<Bytes>,
    audio_header: Option<Bytes>,
    gop: Vec<Bytes>,
    gop_bytes: usize,
    viewers: Vec<mpsc::Sender<Bytes>>,
}

/// One broadcast being published here.
pub struct Stream {
    pub name: String,
    state: Mutex<State>,
}

/// What a push did to the audience.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fanout {
    pub delivered: usize,
    pub dropped: usize,
}

impl Stream {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn video(&self, timestamp_ms: u32, body: &[u8]) -> Fanout {
        let tag = flv::tag(flv::TAG_VIDEO, timestamp_ms, body);
        let mut state = self.lock();
        if flv::is_video_sequence_header(body) {
            state.video_header = Some(tag.clone());
        } else if flv::is_keyframe(body) {
            state.gop.clear();
            state.gop_bytes = 0;
            cache(&mut state, tag.clone());
        } else if !state.gop.is_empty() {
            cache(&mut state, tag.clone());
        }
        fan_out(&mut state, tag)
    }

    pub fn audio(&self, timestamp_ms: u32, body: &[u8]) -> Fanout {
        let tag = flv::tag(flv::TAG_AUDIO, timestamp_ms, body);
        let mut state = self.lock();
        if flv::is_audio_sequence_header(body) {
            state.audio_header = Some(tag.clone());
        } else if !state.gop.is_empty() {
            cache(&mut state, tag.clone());
        }
        fan_out(&mut state, tag)
    }

    /// A new viewer: the FLV header, sequence headers and the cached group
    /// of pictures are queued at once, live tags follow.
    pub fn subscribe(&self) -> mpsc::Receiver<Bytes> {
        let mut state = self.lock();
        let prefill: Vec<Bytes> = std::iter::once(flv::header())
            .chain(state.video_header.clone())
            .chain(state.audio_header.clone())
            .chain(state.gop.iter().cloned())
            .collect();
        let (tx, rx) = mpsc::channel(VIEWER_QUEUE.max(prefill.len() + 64));
        for tag in prefill {
            tx.try_send(tag)
                .expect("the queue was sized for the prefill");
        }
        state.viewers.push(tx);
        rx
    }

    pub fn viewers(&self) -> usize {
        let mut state = self.lock();
        state.viewers.retain(|v| !v.is_closed());
        state.viewers.len()
    }

    /// Ends every viewer's stream.
    fn end(&self) {
        self.lock().viewers.clear();
    }
}

fn cache(state: &mut State, tag: Bytes) {
    state.gop_bytes += tag.len();
    state.gop.push(tag);
    if state.gop_bytes > MAX_GOP_BYTES {
        state.gop.clear();
        state.gop_bytes = 0;
    }
}

fn fan_out(state: &mut State, tag: Bytes) -> Fanout {
    let mut out = Fanout::default();
    state
        .viewers
        .retain(|viewer| match viewer.try_send(tag.clone()) {
            Ok(()) => {
                out.delivered += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                out.dropped += 1;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    out
}

/// Every broadcast published on this node.
#[derive(Clone, Default)]
pub struct Hub {
    streams: Arc<Mutex<HashMap<String, Arc<Stream>>>>,
}

/// Holds a broadcast published; dropping it ends the broadcast's viewers.
pub struct Publishing {
    hub: Hub,
    pub stream: Arc<Stream>,
}

impl Drop for Publishing {
    fn drop(&mut self) {
        self.stream.end();
        let mut streams = self.hub.lock();
        if streams
            .get(&self.stream.name)
            .is_some_and(|s| Arc::ptr_eq(s, &self.stream))
        {
            streams.remove(&self.stream.name);
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts publishing `name`; `None` when it is already published here.
    pub fn publish(&self, name: &str) -> Option<Publishing> {
        let mut streams = self.lock();
        if streams.contains_key(name) {
            return None;
        }
        let stream = Arc::new(Stream {
            name: name.to_string(),
            state: Mutex::new(State::default()),
        });
        streams.insert(name.to_string(), stream.clone());
        Some(Publishing {
            hub: self.clone(),
            stream,
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Stream>> {
        self.lock().get(name).cloned()
    }

    /// Broadcasts published here with their viewer counts.
    pub fn list(&self) -> Vec<(String, usize)> {
        let streams: Vec<Arc<Stream>> = self.lock().values().cloned().collect();
        let mut list: Vec<(String, usize)> = streams
            .iter()
            .map(|s| (s.name.clone(), s.viewers()))
            .collect();
        list.sort();
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &mut mpsc::Receiver<Bytes>) -> Vec<Bytes> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn a_viewer_starts_with_headers_then_the_latest_keyframe() {
        let hub = Hub::default();
        let p = hub.publish("live/x").expect("first publisher");
        assert!(hub.publish("live/x").is_none());
        let s = p.stream.clone();
        s.video(0, &[0x17, 0, 1]); // sequence header
        s.audio(0, &[0xaf, 0, 2]); // sequence header
        s.video(10, &[0x17, 1, 3]); // keyframe
        s.video(20, &[0x27, 1, 4]);
        s.video(30, &[0x17, 1, 5]); // next keyframe: the cache restarts here
        s.audio(31, &[0xaf, 1, 6]);
        let mut rx = s.subscribe();
        let got = drain(&mut rx);
        assert_eq!(got[0], flv::header());
        let bodies: Vec<u8> = got[1..].iter().map(|t| t[13]).collect();
        assert_eq!(bodies, vec![1, 2, 5, 6]);
        s.video(40, &[0x27, 1, 7]);
        assert_eq!(drain(&mut rx).len(), 1);
    }

    #[test]
    fn a_slow_viewer_is_dropped_and_others_go_on() {
        let hub = Hub::default();
        let p = hub.publish("live/x").unwrap();
        let s = p.stream.clone();
        let mut fast = s.subscribe();
        let _slow = s.subscribe();
        let mut dropped = 0;
        for i in 0..(VIEWER_QUEUE as u32 + 10) {
            dropped += s.video(i, &[0x27, 1, 0]).dropped;
            drain(&mut fast);
        }
        assert_eq!(dropped, 1);
        assert_eq!(s.viewers(), 1);
    }

    #[test]
    fn unpublishing_ends_viewers_and_frees_the_name() {
        let hub = Hub::default();
        let p = hub.publish("live/x").unwrap();
        let mut rx = p.stream.subscribe();
        drop(p);
        drain(&mut rx);
        assert!(rx.try_recv().is_err());
        assert!(rx.is_closed());
        assert!(hub.get("live/x").is_none());
        assert!(hub.publish("live/x").is_some());
    }
}
