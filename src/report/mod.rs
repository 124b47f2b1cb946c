//! The report's CSV body to typed rows: a pure function, no I/O.
//!
//! Graph's CSV is loosely specified (see shared/graph-reports.md): a UTF-8 BOM, CRLF or LF,
//! columns that move or appear, rows in no particular order, empty numeric cells. Columns are
//! therefore found by header name, and any cell that cannot be read rejects the whole report so
//! that nothing partial is ever published. So does impossible data: a signed or fractional
//! minute count, a date not exactly `YYYY-MM-DD`, a day reported before it was refreshed or
//! after tomorrow, a day reported twice, a required column named twice.

use time::{format_description::BorrowedFormatItem, macros::format_description, Date};

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::text::one_line;

mod parser;
mod table;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub report_refresh_date: Date,
    pub report_date: Date,
    pub audio_video_minutes: u64,
    pub dial_in_microsoft_minutes: u64,
    pub dial_out_microsoft_minutes: u64,
}

impl Row {
    /// Audio/Video, Dial-in Microsoft and Dial-out Microsoft, in the order of Graph's columns.
    pub fn minutes(&self) -> [u64; 3] {
        [
            self.audio_video_minutes,
            self.dial_in_microsoft_minutes,
            self.dial_out_microsoft_minutes,
        ]
    }
}

/// A report whose rows have distinct Report Dates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    /// The row with the greatest Report Date (rows are in no particular order).
    pub fn newest(&self) -> Option<&Row> {
        self.rows.iter().max_by_key(|row| row.report_date)
    }

    /// The minutes of every row added up; `None` for a header-only report, which has no
    /// totals rather than totals of zero.
    pub fn totals(&self) -> Option<Totals> {
        if self.rows.is_empty() {
            return None;
        }
        let mut totals = Totals::default();
        for row in &self.rows {
            totals.audio_video_minutes += u128::from(row.audio_video_minutes);
            totals.dial_in_microsoft_minutes += u128::from(row.dial_in_microsoft_minutes);
            totals.dial_out_microsoft_minutes += u128::from(row.dial_out_microsoft_minutes);
        }
        Some(totals)
    }
}

/// Minutes summed over the rows of a report, by conference type. Wider than a cell, so that
/// no sum of 64-bit cells can overflow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub audio_video_minutes: u128,
    pub dial_in_microsoft_minutes: u128,
    pub dial_out_microsoft_minutes: u128,
}

impl Totals {
    /// Audio/Video, Dial-in Microsoft and Dial-out Microsoft, in the order of Graph's columns.
    pub fn minutes(&self) -> [u128; 3] {
        [
            self.audio_video_minutes,
            self.dial_in_microsoft_minutes,
            self.dial_out_microsoft_minutes,
        ]
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
    #[error("line 1: column {column:?} is named twice in the header (fields {first} and {second}), so its values are ambiguous")]
    DuplicateColumn {
        column: &'static str,
        first: usize,
        second: usize,
    },
    #[error("line {line}: {column} {value:?} is not {expected}")]
    BadCell {
        line: u64,
        column: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("line {line}: Report Date \"{report_date}\" is after the row's Report Refresh Date \"{refresh_date}\"")]
    DateAfterRefresh {
        line: u64,
        report_date: Date,
        refresh_date: Date,
    },
    #[error("line {line}: {column} \"{value}\" is more than one day after today ({today}, UTC)")]
    FutureDate {
        line: u64,
        column: &'static str,
        value: Date,
        today: Date,
    },
    #[error("line {line}: Report Date \"{value}\" repeats the Report Date of line {first_line}; a report has one row per day")]
    DuplicateDate {
        line: u64,
        value: Date,
        first_line: u64,
    },
    #[error("line {line}: {detail}")]
    Malformed { line: u64, detail: String },
    #[error("line {line}: a second row, where {function} has one row for the whole period")]
    SecondRow { line: u64, function: &'static str },
}

const REFRESH_DATE: &str = "Report Refresh Date";
const REPORT_DATE: &str = "Report Date";

const DATE: &[BorrowedFormatItem<'static>] = format_description!("[year]-[month]-[day]");
/// Dates are published as Unix times, so an earlier one cannot be a real report day.
const FIRST_DATE: Date = time::macros::date!(1970 - 01 - 01);

/// Parses a whole report body. `today` (UTC) bounds the dates: Graph reports days that have
/// passed, so a date more than one day ahead (one day of slack for clocks and time zones) is
/// impossible data.
pub fn parse(body: &[u8], today: Date) -> Result<Report, ReportError> {
    let kind = table::ORGANIZER_ACTIVITY_MINUTE_COUNTS;
    // Unknown columns are not read, and this report has always ignored them silently.
    let parser::Table { rows, .. } = parser::parse_table(kind, body, today)?;
    let rows = rows
        .into_iter()
        .map(|row| {
            let minutes = |conference_type| match row.get(
                kind,
                "sfb_organizer_activity_seconds",
                "conference_type",
                conference_type,
            ) {
                Some(parser::Value::Minutes(minutes)) => minutes,
                // The table's row for this report has the three minute columns (a test holds
                // it to that).
                _ => 0,
            };
            Row {
                report_refresh_date: row.report_refresh_date,
                // A daily report: every row has its Report Date.
                report_date: row.report_date.unwrap_or(row.report_refresh_date),
                audio_video_minutes: minutes("audio_video"),
                dial_in_microsoft_minutes: minutes("dial_in_microsoft"),
                dial_out_microsoft_minutes: minutes("dial_out_microsoft"),
            }
        })
        .collect();
    Ok(Report { rows })
}

/// A CSV reader of the body, past a UTF-8 BOM; an empty body has no header to read.
fn reader(body: &[u8]) -> Result<csv::Reader<&[u8]>, ReportError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ReportError::Empty);
    }
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(body))
}

/// No date beyond tomorrow, and no day reported after its refresh.
fn check_dates(
    line: u64,
    refresh_date: Date,
    report_date: Option<Date>,
    today: Date,
    latest: Date,
) -> Result<(), ReportError> {
    let dated = report_date.map(|d| (REPORT_DATE, d));
    for (column, value) in dated.into_iter().chain([(REFRESH_DATE, refresh_date)]) {
        if value > latest {
            return Err(ReportError::FutureDate {
                line,
                column,
                value,
                today,
            });
        }
    }
    if let Some(report_date) = report_date.filter(|d| *d > refresh_date) {
        return Err(ReportError::DateAfterRefresh {
            line,
            report_date,
            refresh_date,
        });
    }
    Ok(())
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

/// Exactly `YYYY-MM-DD`: no sign, no time part, no other digit count, from 1970 on.
fn parse_date(line: u64, column: &'static str, text: &str) -> Result<Date, ReportError> {
    let shaped = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    shaped
        .then(|| Date::parse(text, DATE).ok())
        .flatten()
        .filter(|d| *d >= FIRST_DATE)
        .ok_or_else(|| ReportError::BadCell {
            line,
            column,
            value: one_line(text, 40),
            expected: "a date (YYYY-MM-DD, from 1970-01-01 on)",
        })
}

/// What a minute cell must be, and a count cell: first its shape, then its range.
const MINUTES: [&str; 2] = [
    "an unsigned decimal integer of minutes",
    "a number of minutes that fits in 64 bits",
];
const COUNT: [&str; 2] = [
    "an unsigned decimal integer",
    "a count that fits in 64 bits",
];

/// An unsigned decimal integer (digits only: no sign, fraction or exponent); an empty cell is
/// 0 (Graph leaves cells empty on days without activity).
fn parse_unsigned(
    line: u64,
    column: &'static str,
    text: &str,
    [shape, range]: [&'static str; 2],
) -> Result<u64, ReportError> {
    if text.is_empty() {
        return Ok(0);
    }
    let bad = |expected| ReportError::BadCell {
        line,
        column,
        value: one_line(text, 40),
        expected,
    };
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(shape));
    }
    text.parse::<u64>().map_err(|_| bad(range))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const HEADER: &str =
        "Report Refresh Date,Report Date,Report Period,Audio/Video,Dial-in Microsoft,Dial-out Microsoft";
    const TODAY: Date = date!(2024 - 03 - 06);

    fn row(refresh: Date, day: Date, av: u64, din: u64, dout: u64) -> Row {
        Row {
            report_refresh_date: refresh,
            report_date: day,
            audio_video_minutes: av,
            dial_in_microsoft_minutes: din,
            dial_out_microsoft_minutes: dout,
        }
    }

    fn rows(line: &str) -> Result<Report, ReportError> {
        parse(format!("{HEADER}\n{line}\n").as_bytes(), TODAY)
    }

    #[test]
    fn documented_shape() {
        let body =
            format!("{HEADER}\n2024-03-05,2024-03-04,7,120,30,4\n2024-03-05,2024-03-03,7,60,0,0\n");
        let report = parse(body.as_bytes(), TODAY).unwrap();
        assert_eq!(report.rows.len(), 2);
        assert_eq!(
            report.newest(),
            Some(&row(
                date!(2024 - 03 - 05),
                date!(2024 - 03 - 04),
                120,
                30,
                4
            ))
        );
    }

    #[test]
    fn newest_row_wherever_it_is() {
        for body in [
            format!("{HEADER}\n2024-03-05,2024-03-02,7,1,0,0\n2024-03-05,2024-03-04,7,9,0,0\n2024-03-05,2024-03-03,7,5,0,0\n"),
            format!("{HEADER}\n2024-03-05,2024-03-04,7,9,0,0\n2024-03-05,2024-03-02,7,1,0,0\n"),
        ] {
            let report = parse(body.as_bytes(), TODAY).unwrap();
            assert_eq!(report.newest().unwrap().report_date, date!(2024 - 03 - 04));
            assert_eq!(report.newest().unwrap().audio_video_minutes, 9);
        }
    }

    #[test]
    fn totals_add_every_row_and_empty_cells_count_zero() {
        let body = format!(
            "{HEADER}\n2024-03-05,2024-03-03,7,10,,1\n2024-03-05,2024-03-04,7,5,2,\n2024-03-05,2024-03-02,7,{},0,0\n",
            u64::MAX
        );
        let report = parse(body.as_bytes(), TODAY).unwrap();
        assert_eq!(
            report.totals(),
            Some(Totals {
                audio_video_minutes: 15 + u128::from(u64::MAX),
                dial_in_microsoft_minutes: 2,
                dial_out_microsoft_minutes: 1,
            })
        );
        let header_only = parse(HEADER.as_bytes(), TODAY).unwrap();
        assert_eq!(header_only.totals(), None);
    }

    #[test]
    fn header_only_is_an_empty_report() {
        for body in [
            HEADER.to_string(),
            format!("\u{FEFF}{HEADER}\r\n"),
            format!("{HEADER}\n\n"),
        ] {
            let r = parse(body.as_bytes(), TODAY).unwrap();
            assert!(r.rows.is_empty());
            assert_eq!(r.newest(), None);
        }
    }

    #[test]
    fn dates_up_to_tomorrow_are_accepted() {
        let tomorrow = rows("2024-03-07,2024-03-07,7,1,2,3").unwrap();
        assert_eq!(tomorrow.rows[0].report_date, date!(2024 - 03 - 07));
        // The bound is today's, not a fixed one.
        let later = parse(
            format!("{HEADER}\n2024-03-08,2024-03-08,7,1,2,3\n").as_bytes(),
            date!(2024 - 03 - 07),
        );
        assert!(later.is_ok(), "{later:?}");
        // At the end of the calendar there is no tomorrow; today still bounds.
        assert!(parse(
            format!("{HEADER}\n{0},{0},7,1,2,3\n", Date::MAX).as_bytes(),
            Date::MAX
        )
        .is_ok());
    }

    #[test]
    fn minutes_are_unsigned_decimal_integers() {
        for (cell, minutes) in [("0", 0), ("", 0), (" ", 0), ("007", 7), ("120", 120)] {
            let r = rows(&format!("2024-03-05,2024-03-04,7,{cell},0,0")).unwrap();
            assert_eq!(r.rows[0].audio_video_minutes, minutes, "{cell:?}");
        }
        for cell in [
            "-0", "+11", "-1", "4.5", "1.", ".5", "1e3", "NaN", "inf", "0x10", "1_000", "1 000",
            "١٢",
        ] {
            let err = rows(&format!("2024-03-05,2024-03-04,7,{cell},0,0")).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "line 2: Audio/Video {:?} is not an unsigned decimal integer of minutes",
                    cell.trim()
                )
            );
        }
    }

    #[test]
    fn minutes_past_64_bits_are_refused() {
        let err = rows("2024-03-05,2024-03-04,7,18446744073709551616,0,0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: Audio/Video \"18446744073709551616\" is not a number of minutes that fits in 64 bits"
        );
    }

    #[test]
    fn dates_are_exactly_year_month_day() {
        for cell in [
            "-2026-01-11",
            "+2026-01-11",
            "0000-01-01",
            "1969-12-31",
            "2026-01-11Tgarbage",
            "2026-01-11T00:00:00Z",
            "2026-01-11 00:00",
            "2026-1-11",
            "20260111",
            "12026-01-11",
            "2026/01/11",
            "2024-02-30",
            "yesterday",
        ] {
            let err = rows(&format!("2024-03-05,{cell},7,0,0,0")).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "line 2: Report Date {cell:?} is not a date (YYYY-MM-DD, from 1970-01-01 on)"
                )
            );
        }
    }

    #[test]
    fn impossible_reports_are_rejected_naming_row_column_and_value() {
        let cases = [
            (
                "2024-03-05,2024-03-04,7,1,2,3\n2024-03-05,2024-03-06,7,1,2,3",
                ReportError::DateAfterRefresh {
                    line: 3,
                    report_date: date!(2024 - 03 - 06),
                    refresh_date: date!(2024 - 03 - 05),
                },
                "line 3: Report Date \"2024-03-06\" is after the row's Report Refresh Date \"2024-03-05\"",
            ),
            (
                "2099-01-01,2099-01-01,7,1,2,3",
                ReportError::FutureDate {
                    line: 2,
                    column: REPORT_DATE,
                    value: date!(2099 - 01 - 01),
                    today: TODAY,
                },
                "line 2: Report Date \"2099-01-01\" is more than one day after today (2024-03-06, UTC)",
            ),
            (
                "2024-03-08,2024-03-04,7,1,2,3",
                ReportError::FutureDate {
                    line: 2,
                    column: REFRESH_DATE,
                    value: date!(2024 - 03 - 08),
                    today: TODAY,
                },
                "line 2: Report Refresh Date \"2024-03-08\" is more than one day after today (2024-03-06, UTC)",
            ),
            (
                "2024-03-05,2024-03-04,7,1,2,3\n2024-03-05,2024-03-03,7,1,2,3\n2024-03-05,2024-03-04,7,9,9,9",
                ReportError::DuplicateDate {
                    line: 4,
                    value: date!(2024 - 03 - 04),
                    first_line: 2,
                },
                "line 4: Report Date \"2024-03-04\" repeats the Report Date of line 2; a report has one row per day",
            ),
        ];
        for (lines, error, message) in cases {
            let err = rows(lines).unwrap_err();
            assert_eq!(err, error);
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn a_required_column_named_twice_is_ambiguous() {
        let body = "Report Refresh Date,Report Date,Audio/Video,Dial-in Microsoft,Dial-out Microsoft, audio/VIDEO\n\
                    2024-03-05,2024-03-04,1,2,3,4\n";
        let err = parse(body.as_bytes(), TODAY).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 1: column \"Audio/Video\" is named twice in the header (fields 3 and 6), so its values are ambiguous"
        );
        // Unknown columns may repeat: they are not read.
        let body = "Report Refresh Date,Report Date,Audio/Video,Dial-in Microsoft,Dial-out Microsoft,X,X\n\
                    2024-03-05,2024-03-04,1,2,3,a,b\n";
        assert!(parse(body.as_bytes(), TODAY).is_ok());
    }

    #[test]
    fn the_missing_column_error_quotes_the_header_with_its_commas() {
        let body = "Report Refresh Date,Report Date,Audio/Video,Dial-in Microsoft\n";
        assert_eq!(
            parse(body.as_bytes(), TODAY).unwrap_err().to_string(),
            "missing column \"Dial-out Microsoft\": the header line reads \"Report Refresh Date,Report Date,Audio/Video,Dial-in Microsoft\", which is not the expected CSV report"
        );
    }

    #[test]
    fn a_bad_row_anywhere_rejects_the_report() {
        let body =
            format!("{HEADER}\n2024-03-05,2024-03-04,7,1,2,3\n2024-03-05,2024-03-03,7,x,2,3\n");
        assert!(matches!(
            parse(body.as_bytes(), TODAY),
            Err(ReportError::BadCell { line: 3, .. })
        ));
    }

    #[test]
    fn errors_are_single_line() {
        let body = b"line one\r\nline two\x07\n";
        let err = parse(body, TODAY).unwrap_err().to_string();
        assert!(!err.contains(['\n', '\r', '\x07']), "{err:?}");
    }

    /// Each file in tests/fixtures/reports, parsed as if today were 2026-01-12, against its
    /// snapshot: the rows accepted or the operator's one-line error.
    #[test]
    fn fixtures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reports");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "csv"))
            .collect();
        files.sort();
        assert!(files.len() >= 30, "fixtures missing from {dir:?}");
        for file in files {
            let name = file.file_stem().unwrap().to_str().unwrap().to_string();
            let outcome = parse(&std::fs::read(&file).unwrap(), date!(2026 - 01 - 12));
            assert_eq!(
                outcome.is_ok(),
                name.starts_with("ok_"),
                "{name}: {outcome:?}"
            );
            insta::with_settings!({
                snapshot_path => "../../tests/fixtures/reports/snapshots",
                prepend_module_to_snapshot => false,
                omit_expression => true,
                input_file => &file,
            }, {
                insta::assert_snapshot!(name, describe(&outcome));
            });
        }
    }

    fn describe(outcome: &Result<Report, ReportError>) -> String {
        match outcome {
            Err(e) => format!("rejected: {e}"),
            Ok(report) => {
                let mut out = format!(
                    "accepted: {} rows, newest Report Date {}\n",
                    report.rows.len(),
                    report
                        .newest()
                        .map_or("none".to_string(), |r| r.report_date.to_string())
                );
                for r in &report.rows {
                    out.push_str(&format!(
                        "{} refreshed {}: audio_video={} dial_in_microsoft={} dial_out_microsoft={}\n",
                        r.report_date,
                        r.report_refresh_date,
                        r.audio_video_minutes,
                        r.dial_in_microsoft_minutes,
                        r.dial_out_microsoft_minutes
                    ));
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use time::Duration;

    const AUDIO_VIDEO: &str = "Audio/Video";
    const DIAL_IN: &str = "Dial-in Microsoft";
    const DIAL_OUT: &str = "Dial-out Microsoft";

    const COLUMNS: [&str; 7] = [
        REFRESH_DATE,
        REPORT_DATE,
        "Report Period",
        AUDIO_VIDEO,
        DIAL_IN,
        DIAL_OUT,
        "Some Future Column",
    ];
    const EPOCH: Date = time::macros::date!(2015 - 01 - 01);
    /// After every generated date.
    const TODAY: Date = time::macros::date!(2026 - 01 - 12);

    /// A cell as Graph might write it: zero sometimes as an empty cell.
    fn minutes() -> impl Strategy<Value = (u64, bool)> {
        (
            prop_oneof![Just(0), 0..100_000u64, any::<u64>()],
            any::<bool>(),
        )
    }

    /// Rows of distinct days in any order, each refreshed 0 to 9 days after its day.
    fn rows() -> impl Strategy<Value = Vec<(Row, [bool; 3])>> {
        prop::collection::btree_set(0i64..3650, 0..40)
            .prop_flat_map(|days| {
                let n = days.len();
                (
                    Just(days.into_iter().collect::<Vec<_>>()).prop_shuffle(),
                    prop::collection::vec((0i64..10, minutes(), minutes(), minutes()), n),
                )
            })
            .prop_map(|(days, cells)| {
                days.into_iter()
                    .zip(cells)
                    .map(|(day, (lag, av, din, dout))| {
                        let row = Row {
                            report_refresh_date: EPOCH + Duration::days(day + lag),
                            report_date: EPOCH + Duration::days(day),
                            audio_video_minutes: av.0,
                            dial_in_microsoft_minutes: din.0,
                            dial_out_microsoft_minutes: dout.0,
                        };
                        (row, [av.1, din.1, dout.1])
                    })
                    .collect()
            })
    }

    fn render(rows: &[(Row, [bool; 3])], columns: &[&str], bom: bool, eol: &str) -> String {
        let mut out = String::new();
        if bom {
            out.push('\u{FEFF}');
        }
        out.push_str(&columns.join(","));
        for (row, blank) in rows {
            out.push_str(eol);
            let number = |v: u64, blank: bool| {
                if v == 0 && blank {
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
            rows in rows(),
            columns in Just(COLUMNS.to_vec()).prop_shuffle(),
            bom in any::<bool>(),
            crlf in any::<bool>(),
        ) {
            let body = render(&rows, &columns, bom, if crlf { "\r\n" } else { "\n" });
            let report = parse(body.as_bytes(), TODAY).unwrap();
            let expected: Vec<Row> = rows.iter().map(|(r, _)| *r).collect();
            prop_assert_eq!(&report.rows, &expected);
            let newest = expected.iter().map(|r| r.report_date).max();
            prop_assert_eq!(report.newest().map(|r| r.report_date), newest);
        }

        /// Accepted exactly when no date lies beyond tomorrow.
        #[test]
        fn today_bounds_every_date(rows in rows(), today in 0i64..3700) {
            let today = EPOCH + Duration::days(today);
            let body = render(&rows, &COLUMNS, false, "\n");
            let latest = rows.iter().map(|(r, _)| r.report_refresh_date).max();
            let outcome = parse(body.as_bytes(), today);
            let in_bounds = latest.is_none_or(|d| d <= today + Duration::days(1));
            prop_assert_eq!(outcome.is_ok(), in_bounds, "{:?}", outcome);
            if !in_bounds {
                let is_future_date = matches!(outcome, Err(ReportError::FutureDate { .. }));
                prop_assert!(is_future_date);
            }
        }

        /// A copy of any row's day anywhere else rejects the report.
        #[test]
        fn a_repeated_day_is_rejected(
            mut rows in rows().prop_filter("a row to repeat", |r| !r.is_empty()),
            pick in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            other in minutes(),
        ) {
            let (mut copy, blank) = rows[pick.index(rows.len())];
            copy.audio_video_minutes = other.0;
            rows.insert(at.index(rows.len() + 1), (copy, blank));
            let body = render(&rows, &COLUMNS, false, "\n");
            let is_duplicate = matches!(
                parse(body.as_bytes(), TODAY),
                Err(ReportError::DuplicateDate { value, .. }) if value == copy.report_date
            );
            prop_assert!(is_duplicate);
        }

        /// Any decoration of a minute count (sign, fraction, exponent, digit group) rejects it.
        #[test]
        fn decorated_minutes_are_rejected(
            n in any::<u32>(),
            decorated in prop_oneof![
                Just("-{}"), Just("+{}"), Just("{}.0"), Just("{}.5"), Just("{}e0"),
                Just("0x{}"), Just("{},000"), Just("{}_0"),
            ],
        ) {
            let cell = decorated.replace("{}", &n.to_string());
            let body = format!("{}\n2024-03-05,2024-03-04,7,0,\"{cell}\",0\n", COLUMNS[..6].join(","));
            let is_bad_cell = matches!(
                parse(body.as_bytes(), TODAY),
                Err(ReportError::BadCell { column: DIAL_IN, line: 2, .. })
            );
            prop_assert!(is_bad_cell);
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&body, TODAY);
        }

        #[test]
        fn csv_like_noise_never_panics(parts in prop::collection::vec(prop_oneof![
            Just(REPORT_DATE.to_string()), Just(REFRESH_DATE.to_string()), Just(AUDIO_VIDEO.to_string()),
            Just(DIAL_IN.to_string()), Just(DIAL_OUT.to_string()), Just(",".to_string()),
            Just("\n".to_string()), Just("\r\n".to_string()), Just("\"".to_string()),
            Just("\u{FEFF}".to_string()), "[0-9T:Z .e+-]{0,14}", "\\PC{0,6}",
        ], 0..120)) {
            let body = parts.concat();
            if let Err(e) = parse(body.as_bytes(), TODAY) {
                prop_assert!(!e.to_string().contains(['\n', '\r']));
            }
        }
    }
}
