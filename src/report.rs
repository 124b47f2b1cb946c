//! The report's CSV body to typed rows: a pure function, no I/O.
//!
//! Graph's CSV is loosely specified (see shared/graph-reports.md): a UTF-8 BOM, CRLF or LF,
//! columns that move or appear, rows in no particular order, empty numeric cells. Columns are
//! therefore found by header name, and any cell that cannot be read rejects the whole report so
//! that nothing partial is ever published.

use time::{format_description::BorrowedFormatItem, macros::format_description, Date};

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::text::one_line;

/// A report period Graph accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    D7,
    D30,
    D90,
    D180,
}

impl Period {
    pub const ALL: [Period; 4] = [Period::D7, Period::D30, Period::D90, Period::D180];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::D7 => "D7",
            Period::D30 => "D30",
            Period::D90 => "D90",
            Period::D180 => "D180",
        }
    }

    pub fn days(self) -> u32 {
        match self {
            Period::D7 => 7,
            Period::D30 => 30,
            Period::D90 => 90,
            Period::D180 => 180,
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl FromStr for Period {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Period::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown period {s:?}: allowed values are D7, D30, D90, D180"))
    }
}

/// The configured periods: non-empty, without duplicates, in ascending order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Periods(Vec<Period>);

impl Periods {
    pub fn new(periods: impl IntoIterator<Item = Period>) -> Option<Periods> {
        let set: BTreeSet<Period> = periods.into_iter().collect();
        (!set.is_empty()).then(|| Periods(set.into_iter().collect()))
    }

    pub fn iter(&self) -> impl Iterator<Item = Period> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One day of the report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub report_refresh_date: Date,
    pub report_date: Date,
    pub audio_video_minutes: f64,
    pub dial_in_microsoft_minutes: f64,
    pub dial_out_microsoft_minutes: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    /// The row with the greatest Report Date; the first of equals, so the choice is stable.
    pub fn newest(&self) -> Option<&Row> {
        self.rows.iter().reduce(|best, row| {
            if row.report_date > best.report_date {
                row
            } else {
                best
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("the body is empty: expected a CSV header line")]
    Empty,
    #[error("missing column {column:?}: the header line reads {header:?}, which is not the expected CSV report")]
    MissingColumn {
        column: &'static str,
        header: String,
    },
    #[error("line {line}: {column} {value:?} is not {expected}")]
    BadCell {
        line: u64,
        column: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("line {line}: {detail}")]
    Malformed { line: u64, detail: String },
}

const REFRESH_DATE: &str = "Report Refresh Date";
const REPORT_DATE: &str = "Report Date";
const AUDIO_VIDEO: &str = "Audio/Video";
const DIAL_IN: &str = "Dial-in Microsoft";
const DIAL_OUT: &str = "Dial-out Microsoft";
const REQUIRED: [&str; 5] = [REFRESH_DATE, REPORT_DATE, AUDIO_VIDEO, DIAL_IN, DIAL_OUT];

const DATE: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");

/// Parses a whole report body.
pub fn parse(body: &[u8]) -> Result<Report, ReportError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ReportError::Empty);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(body);

    let header = reader.byte_headers().map_err(|e| csv_error(&e))?.clone();
    let names: Vec<String> = header
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();
    let mut index = [0usize; REQUIRED.len()];
    for (slot, column) in index.iter_mut().zip(REQUIRED) {
        *slot = names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(column))
            .ok_or_else(|| ReportError::MissingColumn {
                column,
                header: one_line(&String::from_utf8_lossy(header.as_slice()), 80),
            })?;
    }

    let mut rows = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(&e)),
        }
        let line = record.position().map_or(0, |p| p.line());
        let cell = |i: usize| {
            let column = REQUIRED[i];
            let raw = record.get(index[i]).unwrap_or_default();
            std::str::from_utf8(raw)
                .map(str::trim)
                .map_err(|_| ReportError::BadCell {
                    line,
                    column,
                    value: one_line(&String::from_utf8_lossy(raw), 40),
                    expected: "UTF-8 text",
                })
                .map(|text| (column, text))
        };
        let date = |i| cell(i).and_then(|(column, text)| parse_date(line, column, text));
        let minutes = |i| cell(i).and_then(|(column, text)| parse_minutes(line, column, text));
        rows.push(Row {
            report_refresh_date: date(0)?,
            report_date: date(1)?,
            audio_video_minutes: minutes(2)?,
            dial_in_microsoft_minutes: minutes(3)?,
            dial_out_microsoft_minutes: minutes(4)?,
        });
    }
    Ok(Report { rows })
}

fn csv_error(e: &csv::Error) -> ReportError {
    let line = e.position().map_or(0, |p| p.line());
    let detail = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields where the header has {expected_len}"),
        _ => one_line(&e.to_string(), 120),
    };
    ReportError::Malformed { line, detail }
}

/// `YYYY-MM-DD`; a time part after it (seen once in the beta JSON: `2021-10-25T00:00:00Z`) is
/// ignored, since the report has one row per UTC day.
fn parse_date(line: u64, column: &'static str, text: &str) -> Result<Date, ReportError> {
    let day = match text.char_indices().nth(10) {
        Some((i, 'T' | 't' | ' ')) => &text[..i],
        _ => text,
    };
    Date::parse(day, DATE).map_err(|_| ReportError::BadCell {
        line,
        column,
        value: one_line(text, 40),
        expected: "a date (YYYY-MM-DD)",
    })
}

/// Minutes as a non-negative number; an empty cell is 0 (Graph leaves cells empty on days
/// without activity).
fn parse_minutes(line: u64, column: &'static str, text: &str) -> Result<f64, ReportError> {
    if text.is_empty() {
        return Ok(0.0);
    }
    match text.parse::<f64>() {
        // Finite also once turned into seconds.
        Ok(v) if (v * 60.0).is_finite() && v >= 0.0 => Ok(v),
        _ => Err(ReportError::BadCell {
            line,
            column,
            value: one_line(text, 40),
            expected: "a non-negative number of minutes",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const HEADER: &str =
        "Report Refresh Date,Report Date,Report Period,Audio/Video,Dial-in Microsoft,Dial-out Microsoft";

    fn row(refresh: Date, day: Date, av: f64, din: f64, dout: f64) -> Row {
        Row {
            report_refresh_date: refresh,
            report_date: day,
            audio_video_minutes: av,
            dial_in_microsoft_minutes: din,
            dial_out_microsoft_minutes: dout,
        }
    }

    #[test]
    fn documented_shape() {
        let body = format!(
            "{HEADER}\n2024-03-05,2024-03-04,7,120,30,4.5\n2024-03-05,2024-03-03,7,60,0,0\n"
        );
        let report = parse(body.as_bytes()).unwrap();
        assert_eq!(report.rows.len(), 2);
        assert_eq!(
            report.newest(),
            Some(&row(
                date!(2024 - 03 - 05),
                date!(2024 - 03 - 04),
                120.0,
                30.0,
                4.5
            ))
        );
    }

    #[test]
    fn bom_and_crlf() {
        let body = format!("\u{FEFF}{HEADER}\r\n2024-03-05,2024-03-04,7,1,2,3\r\n");
        let report = parse(body.as_bytes()).unwrap();
        assert_eq!(
            report.rows,
            vec![row(
                date!(2024 - 03 - 05),
                date!(2024 - 03 - 04),
                1.0,
                2.0,
                3.0
            )]
        );
    }

    #[test]
    fn columns_by_name_in_any_order_unknown_ignored() {
        let body = "Dial-out Microsoft,Extra,Audio/Video,Report Refresh Date,Dial-in Microsoft,Report Date\n\
                    3,x,1,2024-03-05,2,2024-03-04\n";
        let report = parse(body.as_bytes()).unwrap();
        assert_eq!(
            report.rows,
            vec![row(
                date!(2024 - 03 - 05),
                date!(2024 - 03 - 04),
                1.0,
                2.0,
                3.0
            )]
        );
    }

    #[test]
    fn newest_row_wherever_it_is() {
        for body in [
            format!("{HEADER}\n2024-03-05,2024-03-02,7,1,0,0\n2024-03-05,2024-03-04,7,9,0,0\n2024-03-05,2024-03-03,7,5,0,0\n"),
            format!("{HEADER}\n2024-03-05,2024-03-04,7,9,0,0\n2024-03-05,2024-03-02,7,1,0,0\n"),
        ] {
            let report = parse(body.as_bytes()).unwrap();
            assert_eq!(report.newest().unwrap().report_date, date!(2024 - 03 - 04));
            assert_eq!(report.newest().unwrap().audio_video_minutes, 9.0);
        }
    }

    #[test]
    fn empty_cells_are_zero() {
        let body = format!("{HEADER}\n2024-03-05,2024-03-04,7,,  ,\n");
        let r = parse(body.as_bytes()).unwrap();
        assert_eq!(
            r.rows,
            vec![row(
                date!(2024 - 03 - 05),
                date!(2024 - 03 - 04),
                0.0,
                0.0,
                0.0
            )]
        );
    }

    #[test]
    fn header_only_is_an_empty_report() {
        for body in [
            HEADER.to_string(),
            format!("\u{FEFF}{HEADER}\r\n"),
            format!("{HEADER}\n\n"),
        ] {
            let r = parse(body.as_bytes()).unwrap();
            assert!(r.rows.is_empty());
            assert_eq!(r.newest(), None);
        }
    }

    #[test]
    fn tolerates_a_time_part_and_header_case() {
        let body =
            "report refresh date , REPORT DATE,audio/video,dial-in microsoft,dial-out microsoft\n\
                    2021-10-26T00:00:00Z,2021-10-25T00:00:00Z,1,2,3\n";
        let r = parse(body.as_bytes()).unwrap();
        assert_eq!(r.rows[0].report_date, date!(2021 - 10 - 25));
    }

    #[test]
    fn rejections() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "the body is empty"),
            (b"\xEF\xBB\xBF \r\n", "the body is empty"),
            (
                b"<!DOCTYPE html>\n<html><body>Sign in</body></html>\n",
                "missing column \"Report Refresh Date\"",
            ),
            (
                b"Report Refresh Date,Report Date,Audio/Video,Dial-in Microsoft\n",
                "missing column \"Dial-out Microsoft\"",
            ),
            (b"\x00\xff\xfe\x01garbage", "missing column"),
        ];
        for (body, expected) in cases {
            let err = parse(body).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err}");
        }
        let bad_cells = [
            (
                "2024-03-05,2024-03-04,7,12x,0,0",
                "line 2: Audio/Video \"12x\" is not a non-negative number of minutes",
            ),
            (
                "2024-03-05,2024-03-04,7,-1,0,0",
                "line 2: Audio/Video \"-1\" is not a non-negative number",
            ),
            (
                "2024-03-05,2024-03-04,7,0,NaN,0",
                "line 2: Dial-in Microsoft \"NaN\" is not",
            ),
            (
                "2024-03-05,2024-03-04,7,0,0,inf",
                "line 2: Dial-out Microsoft \"inf\" is not",
            ),
            (
                "2024-03-05,2024-03-04,7,1e307,0,0",
                "line 2: Audio/Video \"1e307\" is not",
            ),
            (
                "2024-03-05,yesterday,7,0,0,0",
                "line 2: Report Date \"yesterday\" is not a date",
            ),
            (
                "2024-02-30,2024-03-04,7,0,0,0",
                "line 2: Report Refresh Date \"2024-02-30\" is not a date",
            ),
            (
                "2024-03-05,2024-03-04,7,0,0",
                "line 2: 5 fields where the header has 6",
            ),
        ];
        for (line, expected) in bad_cells {
            let body = format!("{HEADER}\n{line}\n");
            let err = parse(body.as_bytes()).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err}");
        }
        // A bad row anywhere rejects the report, even after good ones.
        let body =
            format!("{HEADER}\n2024-03-05,2024-03-04,7,1,2,3\n2024-03-05,2024-03-03,7,x,2,3\n");
        assert!(matches!(
            parse(body.as_bytes()),
            Err(ReportError::BadCell { line: 3, .. })
        ));
    }

    #[test]
    fn errors_are_single_line() {
        let body = b"line one\r\nline two\x07\n";
        let err = parse(body).unwrap_err().to_string();
        assert!(!err.contains(['\n', '\r', '\x07']), "{err:?}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use time::Duration;

    const COLUMNS: [&str; 7] = [
        REFRESH_DATE,
        REPORT_DATE,
        "Report Period",
        AUDIO_VIDEO,
        DIAL_IN,
        DIAL_OUT,
        "Some Future Column",
    ];

    /// A cell as Graph might write it: zero sometimes as an empty cell.
    fn minutes() -> impl Strategy<Value = (f64, bool)> {
        (
            prop_oneof![Just(0.0), 0.0..1e9f64, (0u32..100_000).prop_map(f64::from)],
            any::<bool>(),
        )
    }

    fn row() -> impl Strategy<Value = (Row, [bool; 3])> {
        (0i64..3650, 0i64..10, minutes(), minutes(), minutes()).prop_map(
            |(day, lag, av, din, dout)| {
                let epoch = time::macros::date!(2015 - 01 - 01);
                let row = Row {
                    report_refresh_date: epoch + Duration::days(day + lag),
                    report_date: epoch + Duration::days(day),
                    audio_video_minutes: av.0,
                    dial_in_microsoft_minutes: din.0,
                    dial_out_microsoft_minutes: dout.0,
                };
                (row, [av.1, din.1, dout.1])
            },
        )
    }

    fn render(rows: &[(Row, [bool; 3])], columns: &[&str], bom: bool, eol: &str) -> String {
        let mut out = String::new();
        if bom {
            out.push('\u{FEFF}');
        }
        out.push_str(&columns.join(","));
        for (row, blank) in rows {
            out.push_str(eol);
            let number = |v: f64, blank: bool| {
                if v == 0.0 && blank {
                    String::new()
                } else {
                    v.to_string()
                }
            };
            let cells: Vec<String> = columns
                .iter()
                .map(|c| match *c {
                    REFRESH_DATE => row.report_refresh_date.to_string(),
                    REPORT_DATE => row.report_date.to_string(),
                    AUDIO_VIDEO => number(row.audio_video_minutes, blank[0]),
                    DIAL_IN => number(row.dial_in_microsoft_minutes, blank[1]),
                    DIAL_OUT => number(row.dial_out_microsoft_minutes, blank[2]),
                    "Report Period" => "180".into(),
                    _ => "\"quoted, with comma\"".into(),
                })
                .collect();
            out.push_str(&cells.join(","));
        }
        out.push_str(eol);
        out
    }

    proptest! {
        #[test]
        fn generated_reports_round_trip(
            rows in prop::collection::vec(row(), 0..40),
            columns in Just(COLUMNS.to_vec()).prop_shuffle(),
            bom in any::<bool>(),
            crlf in any::<bool>(),
        ) {
            let body = render(&rows, &columns, bom, if crlf { "\r\n" } else { "\n" });
            let report = parse(body.as_bytes()).unwrap();
            let expected: Vec<Row> = rows.iter().map(|(r, _)| *r).collect();
            prop_assert_eq!(&report.rows, &expected);
            let newest = expected.iter().map(|r| r.report_date).max();
            prop_assert_eq!(report.newest().map(|r| r.report_date), newest);
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&body);
        }

        #[test]
        fn csv_like_noise_never_panics(parts in prop::collection::vec(prop_oneof![
            Just(REPORT_DATE.to_string()), Just(REFRESH_DATE.to_string()), Just(AUDIO_VIDEO.to_string()),
            Just(DIAL_IN.to_string()), Just(DIAL_OUT.to_string()), Just(",".to_string()),
            Just("\n".to_string()), Just("\r\n".to_string()), Just("\"".to_string()),
            Just("\u{FEFF}".to_string()), "[0-9T:Z .e+-]{0,14}", "\\PC{0,6}",
        ], 0..120)) {
            let body = parts.concat();
            if let Err(e) = parse(body.as_bytes()) {
                prop_assert!(!e.to_string().contains(['\n', '\r']));
            }
        }
    }
}
