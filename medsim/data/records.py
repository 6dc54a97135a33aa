"""Record-level rules of an event table: which records are observations, doses or ignored.

Every rule is a vectorised mask over records; only the flagged records are looped over, to
write their messages. The rules follow NONMEM's data requirements (NONMEM Users Guide VI,
"PREDPP"; Bauer 2019, *CPT:PSP* 8:525) with medsim's restrictions spelled out in each message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from medsim.data.columns import RESERVED
from medsim.data.limits import MAGNITUDE_CHECKED, MAX_ADDL, MAX_CMT, MAX_MAGNITUDE, RANGE_TEXT, beyond_limits
from medsim.data.parse import Parsed
from medsim.data.report import Notice
from medsim.data.subject import CENS_VALUES


@dataclass(frozen=True)
class RecordKinds:
    """What each record is, once the rules have run.

    Attributes
    ----------
    obs, dose : (n,) bool
        Observation records (EVID 0, MDV 0) and dose records (EVID 1) that will be used.
    rate : (n,) float64
        Effective infusion rate of each dose record (RATE, or AMT / DUR); 0 = bolus.
    subject : (n,) int64
        Subject index of each record in order of first appearance (-1 on ignored lines).
    subject_ids : tuple of str
        IDs in order of first appearance.
    """

    obs: np.ndarray
    dose: np.ndarray
    rate: np.ndarray
    subject: np.ndarray
    subject_ids: tuple[str, ...]


def _is_int(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x) & (x == np.round(x))


def check_records(p: Parsed, time_unit: str = "") -> RecordKinds:
    """Apply the record rules to ``p`` (problems and notices are added to it)."""
    v, act = p.values, p.active
    unit = f" {time_unit}" if time_unit else ""
    evid, mdv, amt, rate, dur = v["EVID"], v["MDV"], v["AMT"], v["RATE"], v["DUR"]
    time, addl, ii, cmt = v["TIME"], v["ADDL"], v["II"], v["CMT"]
    parsed_ok = {
        name: ~(c.bad | ~np.isfinite(np.where(c.missing, 0.0, c.values)))
        & ~(beyond_limits(c.values) if name in MAGNITUDE_CHECKED else False)
        for name, c in p.cells.items()
    }

    def ok(name: str) -> np.ndarray:
        return parsed_ok.get(name, np.ones(p.n, dtype=bool)) & act

    # --- subjects: IDs must come in one contiguous block each (NONMEM starts a new individual
    # whenever ID changes, so a returning ID silently becomes a second person there).
    has_id = act & (p.ids != "")
    codes, uniques = pd.factorize(pd.Series(p.ids[has_id], dtype=object), sort=False)
    subject = np.full(p.n, -1, dtype=np.int64)
    subject[has_id] = codes
    idx = np.flatnonzero(has_id)
    starts = np.ones(idx.size, dtype=bool)
    starts[1:] = codes[1:] != codes[:-1]
    block = np.cumsum(starts) - 1
    first_block = pd.Series(block).groupby(codes).transform("min").to_numpy()
    again = starts & (block != first_block)
    if again.any():
        last_row_of_block = pd.Series(p.rows[idx]).groupby(block).max().to_numpy()
        for j in np.flatnonzero(again):
            earlier = last_row_of_block[first_block[j]]
            p.flag_at(
                idx[j],
                "ID",
                f"subject {p.ids[idx[j]]} appears again after other subjects (its first block ends on row {earlier}); "
                "NONMEM would treat this as a new individual; expected all records of a subject together "
                "(sort by ID, then TIME)",
            )

    # --- time
    t_missing = p.cells["TIME"].missing if "TIME" in p.cells else np.zeros(p.n, dtype=bool)
    p.flag(act & t_missing, "TIME", f"TIME is missing; expected the time of the record{unit}")
    p.flag(ok("TIME") & ~t_missing & (time < 0), "TIME", f"negative time; expected TIME >= 0{unit}")
    prev = np.full(idx.size, -1, dtype=np.int64)
    prev[1:] = idx[:-1]
    same_block = ~starts
    t_idx = time[idx]
    t_prev = np.where(prev >= 0, time[np.maximum(prev, 0)], np.nan)
    time_ok = ok("TIME")
    decreasing = same_block & (t_idx < t_prev) & time_ok[idx] & time_ok[np.maximum(prev, 0)]
    if decreasing.any():
        for j in np.flatnonzero(decreasing):
            i, q = idx[j], prev[j]
            p.flag_at(
                i,
                "TIME",
                f"TIME decreases within subject {p.ids[i]} (row {p.rows[q]} has TIME {p.text('TIME', q)}); "
                "expected records sorted by time within each subject, as NONMEM requires",
            )

    # --- event type
    p.flag(
        ok("EVID") & np.isin(evid, (3, 4)),
        "EVID",
        "reset events (EVID 3/4) are not supported; expected EVID "
        "0, 1 or 2 (give each treatment period its own ID instead of a reset)",
    )
    p.flag(
        ok("EVID") & ~np.isin(evid, (0, 1, 2, 3, 4)),
        "EVID",
        "unknown EVID; expected 0 (observation), 1 (dose) or 2 (other event)",
    )
    p.flag(ok("MDV") & ~np.isin(mdv, (0, 1)), "MDV", "expected MDV 0 (DV is an observation) or 1 (no observation)")
    p.flag(
        ok("SS") & (v["SS"] != 0),
        "SS",
        "steady-state dosing (SS) is not supported; expected SS = 0 or '.' "
        "(give the doses leading to steady state explicitly, e.g. with ADDL/II)",
    )

    is_obs = act & (evid == 0) & (mdv == 0)
    is_dose = act & (evid == 1)
    p.note(act & (evid == 2), "EVID 2 (other-event) records are ignored", "EVID")
    p.note(act & (evid == 0) & (mdv == 1), "observation records with MDV = 1 are ignored", "MDV")

    # --- observations
    dv_missing = p.cells["DV"].missing if "DV" in p.cells else np.zeros(p.n, dtype=bool)
    p.flag(
        is_obs & dv_missing,
        "DV",
        "observation record (EVID 0, MDV 0) without a DV; expected the measured value, "
        "or MDV = 1 to mark a record without a measurement",
    )
    p.flag(
        is_obs & ok("AMT") & (amt != 0),
        "AMT",
        "an observation record (EVID 0) carries a dose amount; expected AMT = 0 or '.', or EVID = 1 if this is a dose",
    )
    p.flag(
        is_obs & ok("RATE") & (rate != 0), "RATE", "an observation record (EVID 0) carries a RATE; expected 0 or '.'"
    )
    p.flag(is_obs & ok("DUR") & (dur != 0), "DUR", "an observation record (EVID 0) carries a DUR; expected 0 or '.'")
    if "CENS" in p.cells:
        p.flag(
            is_obs & ok("CENS") & ~np.isin(v["CENS"], CENS_VALUES),
            "CENS",
            lambda i: (
                f"CENS = {v['CENS'][i]:g} on an observation; expected 0 (measured), 1 (below the lower limit of "
                "quantification or a sensor floor, DV = that limit) or -1 (above an upper limit or sensor ceiling, "
                "DV = that limit)"
            ),
        )
        p.flag(
            act & ~is_obs & ok("CENS") & (v["CENS"] != 0),
            "CENS",
            "CENS on a record that is not a used observation (EVID 0, MDV 0); expected 0 or '.'",
        )
    if p.columns.has("LIMIT"):
        p.notices.append(
            Notice(
                "column ignored (a censored record's limit is its DV, NONMEM's M3 convention; interval censoring "
                "with a second limit is not supported)",
                (),
                p.columns.label("LIMIT"),
            )
        )

    # --- doses
    amt_missing = p.cells["AMT"].missing if "AMT" in p.cells else np.ones(p.n, dtype=bool)
    p.flag(is_dose & amt_missing, "AMT", "dose record (EVID 1) without AMT; expected the dose amount (> 0)")
    p.flag(
        is_dose & ok("AMT") & ~amt_missing & (amt <= 0),
        "AMT",
        "dose amount must be positive; expected AMT > 0 on a dose record (EVID 1)",
    )
    p.flag(
        is_dose & ok("RATE") & np.isin(rate, (-1, -2)),
        "RATE",
        "modelled infusion rate/duration (RATE -1/-2) "
        "is not supported; expected RATE = 0 (bolus) or the rate itself (> 0), or a DUR column",
    )
    p.flag(
        is_dose & ok("RATE") & (rate < 0) & ~np.isin(rate, (-1, -2)),
        "RATE",
        "negative infusion rate; expected RATE = 0 (bolus) or > 0 (zero-order infusion, amount per time unit)",
    )
    p.flag(is_dose & ok("DUR") & (dur < 0), "DUR", "negative infusion duration; expected DUR = 0 (bolus) or > 0")
    p.flag(
        is_dose & ok("DUR") & ok("RATE") & (dur > 0) & (rate != 0),
        "DUR",
        "both RATE and DUR are given; expected one of them (RATE = AMT / DUR)",
    )
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        effective_rate = np.where((dur > 0) & (rate == 0), amt / dur, np.maximum(rate, 0.0))
    p.flag(
        is_dose & ok("AMT") & ok("DUR") & ok("RATE") & (dur > 0) & (rate == 0) & beyond_limits(effective_rate),
        "DUR",
        lambda i: (
            f"the infusion rate AMT / DUR = {effective_rate[i]:.3g} is outside the range medsim computes "
            f"with (float32); expected {RANGE_TEXT} - check the units of AMT and DUR"
        ),
    )
    dv_given = ~dv_missing & (np.nan_to_num(v["DV"]) != 0)
    p.note(
        is_dose & ((mdv == 0) | dv_given),
        "dose records carry MDV = 0 or a DV; they are used as doses only (put a measurement on its own EVID 0 record)",
    )

    # --- additional doses
    p.flag(
        ok("ADDL") & ((addl < 0) | ~_is_int(addl) | (addl > MAX_ADDL)),
        "ADDL",
        f"expected ADDL to be a whole number >= 0 and at most {MAX_ADDL} (each additional dose is held in memory)",
    )
    with np.errstate(invalid="ignore", over="ignore"):
        last_dose = time + addl * ii
    p.flag(
        is_dose & ok("TIME") & ok("ADDL") & ok("II") & (addl > 0) & (addl <= MAX_ADDL) & ~(last_dose <= MAX_MAGNITUDE),
        "ADDL",
        lambda i: (
            f"the last additional dose falls at TIME + ADDL x II = {last_dose[i]:.3g}, beyond "
            f"{MAX_MAGNITUDE:g}, the largest time medsim computes with; expected fewer doses or a shorter II"
        ),
    )
    p.flag(ok("II") & (ii < 0), "II", "negative interdose interval; expected II > 0 with ADDL")
    p.flag(
        act & ~is_dose & ok("ADDL") & (addl != 0),
        "ADDL",
        "ADDL on a record that is not a dose (EVID 1); expected 0 or '.'",
    )
    p.flag(
        is_dose & ok("ADDL") & ok("II") & (addl > 0) & (ii <= 0),
        "ADDL",
        "ADDL without a positive II; expected an interdose interval II > 0 on the same record",
    )
    p.flag(
        is_dose & ok("II") & ok("ADDL") & (ii > 0) & (addl == 0),
        "II",
        "II without ADDL (II alone only means "
        "something for steady state, which is not supported); expected ADDL > 0 or II = 0",
    )

    # --- compartments
    used = is_obs | is_dose
    p.flag(
        used & ok("CMT") & ((cmt <= 0) | ~_is_int(cmt) | (cmt > MAX_CMT)),
        "CMT",
        f"expected CMT to be a positive whole number (the compartment the model doses or observes), at most {MAX_CMT}",
    )

    # --- duplicates: the same record twice double-weights a measurement or doubles a dose.
    other = [k for k, h in enumerate(p.raw.header) if p.columns.names.get(h) not in RESERVED]
    key = pd.DataFrame({f"c{k}": p.raw.frame.iloc[:, k].astype("string").str.strip() for k in other})
    for name, values in p.values.items():
        key[name] = values
    key["ID"] = p.ids
    key["active"] = act  # an ignored line never makes a record a duplicate
    dup = key.duplicated(keep="first").to_numpy() & act
    if dup.any():
        first = key.groupby(list(key.columns), dropna=False, sort=False).ngroup().to_numpy()
        first_row = pd.Series(p.rows).groupby(first).transform("min").to_numpy()
        p.flag(
            dup,
            "ID",
            lambda i: (
                f"duplicates row {first_row[i]}; expected each record once (two doses at the same "
                "time should be one record with the summed AMT)"
            ),
        )

    # --- pre-dose samples: medsim takes an observation at a dose time before the dose;
    # NONMEM takes it after a dose record that comes before it in the file.
    order_key = pd.DataFrame({"s": subject, "t": time, "d": is_dose.astype(np.int64)})
    doses_before = (
        order_key.groupby(["s", "t"], sort=False, dropna=False)["d"].cumsum().to_numpy() - order_key["d"].to_numpy()
    )
    p.note(
        is_obs & (doses_before > 0),
        "observations listed after a dose at the same time are taken before that "
        "dose (pre-dose) by medsim, while NONMEM evaluates them after it; if the sample was drawn after the "
        "dose, give it its actual (later) time",
        "TIME",
    )

    return RecordKinds(is_obs, is_dose, np.where(is_dose, effective_rate, 0.0), subject, tuple(map(str, uniques)))
