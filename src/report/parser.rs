//! Any report of the table, from its CSV body to rows of values: a pure function, with the
//! rules of [`super::parse`] (columns by header name, impossible data rejects the report).

use std::collections::HashMap;
use std::time::Duration;

use time::Date;

use super::table::{ReportKind, Shape, Unit};
use super::{
    check_dates, csv_error, parse_date, parse_unsigned, reader, ReportError, REFRESH_DATE,
    REPORT_DATE,
};
use crate::text::one_line;

/// Graph's `Report Period` column repeats the period asked for, so it is known but not read.
const REPORT_PERIOD: &str = "Report Period";

/// One cell, as its column's unit says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value {
    Count(u64),
    Minutes(u64),
    Duration(Duration),
}

/// One row of a report: a day, or for a distribution the whole period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableRow {
    pub(crate) report_refresh_date: Date,
    /// `None` in a distribution, which has no Report Date.
    pub(crate) report_date: Option<Date>,
    /// One per column of the report: the families' columns in the table's order.
    pub(crate) values: Vec<Value>,
}

impl TableRow {
    /// The value of the column `label="value"` of the family `family`.
    pub(crate) fn get(
        &self,
        report: &ReportKind,
        family: &str,
        label: &str,
        value: &str,
    ) -> Option<Value> {
        let columns = report
            .families
            .iter()
            .flat_map(|f| f.columns.iter().map(move |c| (f, c)));
        columns
            .zip(&self.values)
            .find(|((f, c), _)| f.is_named(family) && f.label == Some(label) && c.value == value)
            .map(|(_, v)| *v)
    }
}

/// A report's rows, and the header's columns the table does not know (trimmed, in header
/// order), which were not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    pub(crate) rows: Vec<TableRow>,
    pub(crate) unknown_columns: Vec<String>,
}

/// Parses the body of `report`. `today` (UTC) bounds the dates as in [`super::parse`]; a
/// distribution, which has no Report Date, has at most one row.
pub(crate) fn parse_table(
    report: &ReportKind,
    body: &[u8],
    today: Date,
) -> Result<Table, ReportError> {
    let mut reader = reader(body)?;
    let header = reader.byte_headers().map_err(|e| csv_error(&e))?.clone();
    let names: Vec<String> = header
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_string())
        .collect();

    let daily = report.shape == Shape::Daily;
    let mut wanted: Vec<&'static [&'static str]> = vec![&[REFRESH_DATE]];
    if daily {
        wanted.push(&[REPORT_DATE]);
    }
    let dates = wanted.len();
    let mut units = Vec::new();
    for family in report.families {
        for column in family.columns {
            wanted.push(column.names);
            units.push(family.unit);
        }
    }
    let index = columns(&names, &wanted)?;
    let unknown_columns = names
        .iter()
        .filter(|n| {
            !n.eq_ignore_ascii_case(REPORT_PERIOD)
                && !wanted.iter().any(|spellings| spelled(spellings, n))
        })
        .cloned()
        .collect();

    let latest = today.next_day().unwrap_or(today);
    let mut rows: Vec<TableRow> = Vec::new();
    let mut lines_by_date = HashMap::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(&e)),
        }
        let line = record.position().map_or(0, |p| p.line());
        if !daily && !rows.is_empty() {
            return Err(ReportError::SecondRow {
                line,
                function: report.function,
            });
        }
        let cell = |i: usize| {
            let column = wanted[i][0];
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
        let report_refresh_date = date(0)?;
        let report_date = if daily { Some(date(1)?) } else { None };
        let values = units
            .iter()
            .enumerate()
            .map(|(k, unit)| {
                cell(dates + k).and_then(|(column, text)| parse_value(line, column, text, *unit))
            })
            .collect::<Result<Vec<_>, _>>()?;
        check_dates(line, report_refresh_date, report_date, today, latest)?;
        if let Some(day) = report_date {
            if let Some(first_line) = lines_by_date.insert(day, line) {
                return Err(ReportError::DuplicateDate {
                    line,
                    value: day,
                    first_line,
                });
            }
        }
        rows.push(TableRow {
            report_refresh_date,
            report_date,
            values,
        });
    }
    Ok(Table {
        rows,
        unknown_columns,
    })
}

fn spelled(spellings: &[&str], name: &str) -> bool {
    spellings.iter().any(|s| name.eq_ignore_ascii_case(s))
}

/// The field index of each wanted column, found by any of its spellings (trimmed, any case);
/// a column found twice, under one spelling or two, is ambiguous.
fn columns(
    names: &[String],
    wanted: &[&'static [&'static str]],
) -> Result<Vec<usize>, ReportError> {
    let mut index = Vec::with_capacity(wanted.len());
    for spellings in wanted {
        let column = spellings[0];
        let mut found = names
            .iter()
            .enumerate()
            .filter(|(_, n)| spelled(spellings, n))
            .map(|(i, _)| i);
        let first = found.next().ok_or_else(|| ReportError::MissingColumn {
            column,
            header: one_line(&names.join(","), 160),
        })?;
        if let Some(second) = found.next() {
            return Err(ReportError::DuplicateColumn {
                column,
                first: first + 1,
                second: second + 1,
            });
        }
        index.push(first);
    }
    Ok(index)
}

fn parse_value(
    line: u64,
    column: &'static str,
    text: &str,
    unit: Unit,
) -> Result<Value, ReportError> {
    match unit {
        Unit::Count => parse_unsigned(line, column, text, super::COUNT).map(Value::Count),
        Unit::Minutes => parse_unsigned(line, column, text, super::MINUTES).map(Value::Minutes),
        Unit::Duration => parse_duration(line, column, text).map(Value::Duration),
    }
}

const DURATION: &str =
    "an ISO 8601 duration of days, hours, minutes and seconds such as PT1H2M3.5S";
const DURATION_RANGE: &str = "a duration that fits in 64 bits of seconds";

/// `P[nD][T[nH][nM][n[.f]S]]` with at least one part, f up to nanoseconds (no sign, no years
/// or months, whose length varies); an empty cell is 0, as Teams leaves it on quiet days.
fn parse_duration(line: u64, column: &'static str, text: &str) -> Result<Duration, ReportError> {
    if text.is_empty() {
        return Ok(Duration::ZERO);
    }
    let bad = |expected| ReportError::BadCell {
        line,
        column,
        value: one_line(text, 40),
        expected,
    };
    let (seconds, nanos) = iso_duration(text).ok_or_else(|| bad(DURATION))?;
    let seconds = seconds.ok_or_else(|| bad(DURATION_RANGE))?;
    Ok(Duration::new(seconds, nanos))
}

/// Whole seconds (`None` past 64 bits) and nanoseconds, or `None` if `text` is no duration.
fn iso_duration(text: &str) -> Option<(Option<u64>, u32)> {
    let mut rest = text.strip_prefix('P')?;
    let mut seconds = Some(0u64);
    let mut add = |digits: &str, per: u64| {
        seconds = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(per))
            .zip(seconds)
            .and_then(|(a, b)| a.checked_add(b));
    };
    let mut parts = 0;
    if let Some((digits, after)) = number(rest, 'D') {
        add(digits, 86_400);
        rest = after;
        parts += 1;
    }
    let mut nanos = 0;
    if let Some(time) = rest.strip_prefix('T') {
        rest = time;
        let before = parts;
        for (designator, per) in [('H', 3_600), ('M', 60)] {
            if let Some((digits, after)) = number(rest, designator) {
                add(digits, per);
                rest = after;
                parts += 1;
            }
        }
        let whole_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (whole, after) = rest.split_at(whole_end);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(f) => f.split_at(f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len())),
            None => ("", after),
        };
        if let Some(after_s) = after.strip_prefix('S') {
            let dotted = whole_end < rest.len() && rest[whole_end..].starts_with('.');
            if whole.is_empty() || (dotted && fraction.is_empty()) || fraction.len() > 9 {
                return None;
            }
            add(whole, 1);
            // Pad to nine digits: "5" is 500,000,000 nanoseconds.
            nanos = format!("{fraction:0<9}").parse().ok()?;
            rest = after_s;
            parts += 1;
        }
        if parts == before {
            return None;
        }
    }
    (parts > 0 && rest.is_empty()).then_some((seconds, nanos))
}

/// Leading digits of `s` followed by `designator`: the digits and what follows.
fn number(s: &str, designator: char) -> Option<(&str, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit())?;
    let rest = s[end..].strip_prefix(designator)?;
    (end > 0).then_some((&s[..end], rest))
}

#[cfg(test)]
mod tests {
    use super::super::table::REPORTS;
    use super::*;
    use time::macros::date;

    const TODAY: Date = date!(2026 - 01 - 12);

    fn kind(function: &str) -> &'static ReportKind {
        REPORTS.iter().find(|r| r.function == function).unwrap()
    }

    fn duration(text: &str) -> Result<Duration, String> {
        parse_duration(2, "Audio Duration", text).map_err(|e| e.to_string())
    }

    #[test]
    fn iso_durations_with_days_hours_minutes_and_fractions() {
        for (text, seconds, nanos) in [
            ("", 0, 0),
            ("PT0S", 0, 0),
            ("PT1H2M3.5S", 3_723, 500_000_000),
            ("PT90M", 5_400, 0),
            ("PT1H", 3_600, 0),
            ("PT2M", 120, 0),
            ("P1D", 86_400, 0),
            ("P1DT2H", 93_600, 0),
            ("PT0.000000001S", 0, 1),
            ("PT59.999S", 59, 999_000_000),
            ("PT18446744073709551615S", u64::MAX, 0),
        ] {
            assert_eq!(
                duration(text),
                Ok(Duration::new(seconds, nanos)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn anything_else_is_no_duration() {
        for text in [
            "0",
            "P",
            "PT",
            "T1S",
            "-PT1S",
            "+PT1S",
            "PT-1S",
            "pt1s",
            "PT1s",
            "00:00:00",
            "PT1.S",
            "PT.5S",
            "PT1.5H",
            "PT1M1H",
            "PT1S1M",
            "P1Y",
            "P1M",
            "P1W",
            "PT1H1H",
            "PT1",
            "P1DT",
            "PT1,5S",
            "PT1e3S",
            "PT0.0000000001S",
            "1D",
            "PT١S",
        ] {
            assert_eq!(
                duration(text),
                Err(format!("line 2: Audio Duration {text:?} is not {DURATION}")),
                "{text:?}"
            );
        }
        assert_eq!(
            duration("PT18446744073709551616S"),
            Err(format!(
                "line 2: Audio Duration \"PT18446744073709551616S\" is not {DURATION_RANGE}"
            ))
        );
        assert!(duration("P213503982334602D").is_err(), "days past 64 bits");
        assert!(duration("PT18446744073709551615S1").is_err());
    }

    #[test]
    fn counts_are_unsigned_decimal_integers() {
        let header = "Report Refresh Date,Report Date,Public Teams,Active Public Teams,Private Teams,Active Private Teams";
        for (cell, expected) in [
            ("-1", "an unsigned decimal integer"),
            ("+1", "an unsigned decimal integer"),
            ("1.0", "an unsigned decimal integer"),
            ("1e3", "an unsigned decimal integer"),
            ("18446744073709551616", "a count that fits in 64 bits"),
        ] {
            let body = format!("{header}\n2026-01-11,2026-01-10,1,{cell},1,1\n");
            let err = parse_table(kind("getTeamsTeamCounts"), body.as_bytes(), TODAY).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("line 2: Active Public Teams {cell:?} is not {expected}")
            );
        }
    }

    /// A body of `report`: its first spellings in table order, then `extra`; per row its
    /// dates and `value` in the first column (1 or one minute in the others).
    fn body(report: &ReportKind, extra: &str, rows: &[(Date, Date, &str)]) -> String {
        let daily = report.shape == Shape::Daily;
        let mut header = vec![REFRESH_DATE];
        if daily {
            header.push(REPORT_DATE);
        }
        let columns: Vec<_> = report
            .families
            .iter()
            .flat_map(|f| f.columns.iter().map(move |c| (c.names[0], f.unit)))
            .collect();
        header.extend(columns.iter().map(|(name, _)| *name));
        let mut out = header.join(",") + extra + "\n";
        for (refresh, day, value) in rows {
            let mut cells = vec![refresh.to_string()];
            if daily {
                cells.push(day.to_string());
            }
            for (i, (_, unit)) in columns.iter().enumerate() {
                cells.push(match (i, unit) {
                    (0, _) => value.to_string(),
                    (_, Unit::Duration) => "PT1M".to_string(),
                    _ => "1".to_string(),
                });
            }
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    #[test]
    fn every_report_refuses_what_todays_report_refuses() {
        let (refresh, day) = (date!(2026 - 01 - 11), date!(2026 - 01 - 10));
        for report in &REPORTS {
            let f = report.function;
            let first = report.families[0].columns[0].names[0];
            let ok = |value| {
                let table = parse_table(
                    report,
                    body(report, "", &[(refresh, day, value)]).as_bytes(),
                    TODAY,
                );
                table.unwrap_or_else(|e| panic!("{f}: {e}"))
            };
            let fails = |text: String| {
                parse_table(report, text.as_bytes(), TODAY)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
                    .expect_err(&format!("{f}: {text:?}"))
            };
            let table = ok("");
            assert_eq!(table.rows.len(), 1, "{f}");
            assert!(table.unknown_columns.is_empty(), "{f}");
            assert_eq!(
                table.rows[0].report_date.is_some(),
                report.shape == Shape::Daily
            );

            let first_is_duration = report.families[0].unit == Unit::Duration;
            for bad in ["-1", "+1", "1.5", "1e3", "x"] {
                let err = fails(body(report, "", &[(refresh, day, bad)]));
                assert!(
                    err.starts_with(&format!("line 2: {first} \"{bad}\" is not ")),
                    "{f}: {err}"
                );
                assert!(first_is_duration || err.contains("unsigned"), "{f}: {err}");
            }
            // A column under two of its spellings, or twice under one, any case.
            let err = fails(body(report, &format!(", {}", first.to_uppercase()), &[]));
            assert!(
                err.contains(&format!("column {first:?} is named twice")),
                "{f}: {err}"
            );
            // A needed column missing is named.
            let whole = body(report, "", &[]);
            // Never the first field, which is the Report Refresh Date.
            let without = whole.replacen(&format!(",{first}"), "", 1);
            assert!(
                fails(without).starts_with(&format!("missing column {first:?}")),
                "{f}"
            );
            let err = fails(body(report, "", &[(date!(2026 - 01 - 20), day, "1")]));
            assert!(err.contains("more than one day after today"), "{f}: {err}");
            for date in [
                "2026-02-30",
                "1969-12-31",
                "+2026-01-11",
                "2026-01-11T00:00:00Z",
            ] {
                let text = body(report, "", &[(refresh, day, "1")]).replace("2026-01-11", date);
                let err = fails(text);
                assert!(err.contains("is not a date"), "{f}: {err}");
            }
            if report.shape == Shape::Daily {
                let err = fails(body(
                    report,
                    "",
                    &[
                        (refresh, date!(2026 - 01 - 11), "1"),
                        (date!(2026 - 01 - 10), date!(2026 - 01 - 11), "1"),
                    ],
                ));
                assert!(
                    err.contains("after the row's Report Refresh Date"),
                    "{f}: {err}"
                );
                let err = fails(body(
                    report,
                    "",
                    &[(refresh, day, "1"), (refresh, day, "2")],
                ));
                assert!(
                    err.contains("repeats the Report Date of line 2"),
                    "{f}: {err}"
                );
            } else {
                let err = fails(body(
                    report,
                    "",
                    &[(refresh, day, "1"), (refresh, day, "2")],
                ));
                assert_eq!(
                    err,
                    format!("line 3: a second row, where {f} has one row for the whole period")
                );
            }
            let mut bytes = body(report, "", &[(refresh, day, "1")]).into_bytes();
            let at = bytes.len() - 2;
            bytes.insert(at, 0xFF);
            let err = parse_table(report, &bytes, TODAY).unwrap_err().to_string();
            assert!(err.contains("is not UTF-8 text"), "{f}: {err}");
            for text in [
                "",
                " \r\n",
                "<!DOCTYPE html>\n<html><body>Sign in</body></html>\n",
            ] {
                let err = fails(text.to_string());
                assert!(
                    err.contains("empty")
                        || err.starts_with("missing column \"Report Refresh Date\""),
                    "{f}: {err}"
                );
            }
        }
    }

    /// Each file in tests/fixtures/reports/family, `<function>[--variant].csv`, parsed as that
    /// report as if today were 2026-01-12, against its snapshot.
    #[test]
    fn fixtures() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reports/family");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "csv"))
            .collect();
        files.sort();
        let mut covered = std::collections::BTreeSet::new();
        for file in files {
            let name = file.file_stem().unwrap().to_str().unwrap().to_string();
            let function = name.split("--").next().unwrap();
            covered.insert(function.to_string());
            let report = kind(function);
            let outcome = parse_table(report, &std::fs::read(&file).unwrap(), TODAY);
            assert_eq!(
                outcome.is_err(),
                name.contains("--reject_"),
                "{name}: {outcome:?}"
            );
            insta::with_settings!({
                snapshot_path => "../../tests/fixtures/reports/family/snapshots",
                prepend_module_to_snapshot => false,
                omit_expression => true,
                input_file => &file,
            }, {
                insta::assert_snapshot!(name, describe(report, &outcome));
            });
        }
        assert_eq!(
            covered.len(),
            REPORTS.len(),
            "a fixture per report: {covered:?}"
        );
    }

    fn describe(report: &ReportKind, outcome: &Result<Table, ReportError>) -> String {
        let table = match outcome {
            Err(e) => return format!("rejected: {e}"),
            Ok(table) => table,
        };
        let mut out = format!(
            "accepted: {} rows, unknown columns {:?}\n",
            table.rows.len(),
            table.unknown_columns
        );
        for row in &table.rows {
            let day = row
                .report_date
                .map_or("period".to_string(), |d| d.to_string());
            out.push_str(&format!("{day} refreshed {}:\n", row.report_refresh_date));
            let columns = report
                .families
                .iter()
                .flat_map(|f| f.columns.iter().map(move |c| (f, c)));
            for ((family, column), value) in columns.zip(&row.values) {
                let label = family
                    .label
                    .map_or(String::new(), |l| format!("{{{l}={:?}}}", column.value));
                out.push_str(&format!(
                    "  {}_{}{label} = {value:?}\n",
                    family.stem, family.quantity
                ));
            }
        }
        out
    }
}
