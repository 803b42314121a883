//! Wire types the API sends that are not pool types: the error body and one line of an
//! output stream (NDJSON). Shared by the server (`api`) and the typed client (`client`).

use serde::{Deserialize, Serialize};

use crate::session::{OutputEvent, Stream};

/// Every error answer: a stable machine code and a message naming what was involved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    /// With `timeout` and `resource_limit` answers to a one-shot command: its output, exit
    /// reason, usage and events up to the end (a `CommandResult`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// One line of `GET /v1/cells/{id}/output` (newline-delimited JSON).
///
/// `offset` is the position of the chunk's first byte in the cell's output (stdout and stderr
/// share one sequence), so a reader that reconnects asks `?from=<offset + len>` and misses
/// nothing the spool still holds. Valid UTF-8 travels as `data`; anything else as `data_b64`
/// (standard base64), so no byte is ever altered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputLine {
    Data {
        stream: Stream,
        offset: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_b64: Option<String>,
    },
    /// The reader fell behind (or asked for output the spool no longer holds): `dropped`
    /// bytes were skipped.
    Lagged { dropped: u64 },
    /// The cell's output is complete (both pipes closed).
    End,
    /// A streamed one-shot command (`"stream": true`): its cell, first of all.
    Started { cell: String },
    /// A streamed one-shot command ended: how (in `result.exit`), with usage and events; its
    /// output was the `data` lines before. Always the last line.
    Exit { result: Box<crate::pool::CommandResult> },
}

impl OutputLine {
    /// The raw bytes of a `Data` line (decoding `data_b64`); `None` for other lines.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        match self {
            OutputLine::Data { data: Some(s), .. } => Some(s.clone().into_bytes()),
            OutputLine::Data { data_b64: Some(b), .. } => base64::engine::general_purpose::STANDARD.decode(b).ok(),
            _ => None,
        }
    }
}

impl From<OutputEvent> for OutputLine {
    fn from(ev: OutputEvent) -> Self {
        use base64::Engine;
        match ev {
            OutputEvent::Data { stream, offset, data } => match std::str::from_utf8(&data) {
                Ok(s) => OutputLine::Data { stream, offset, data: Some(s.to_owned()), data_b64: None },
                Err(_) => OutputLine::Data {
                    stream,
                    offset,
                    data: None,
                    data_b64: Some(base64::engine::general_purpose::STANDARD.encode(&data)),
                },
            },
            OutputEvent::Lagged { dropped } => OutputLine::Lagged { dropped },
            OutputEvent::End => OutputLine::End,
        }
    }
}
