"""Launch: a preset, every field editable (grouped by topic), validated before anything is
enqueued; seeds launch one run each, as a group."""
from __future__ import annotations

import streamlit as st

from backend.errors import AuthError, LimitError
from model.config import ConfigError, build_config
from model.presets import PRESETS
from webapp import ui
from webapp.forms import config_form, overrides, parse_seeds

DEVICES = {"auto": "auto", "cuda": "GPU", "cpu": "CPU"}


def pick_preset() -> str:
    names = list(PRESETS)
    st.subheader("1 · Preset")
    preset = st.selectbox("Preset", names, index=names.index("smoke"), key="launch_preset",
                          format_func=lambda n: f"{n} — {PRESETS[n]['description']}")
    with st.expander("What each preset is for"):
        st.table({"preset": names, "what it is": [PRESETS[n]["description"] for n in names]})
    return preset


def launch(preset: str, values: dict, base: dict, name: str, seeds, device: str) -> list[str] | dict[str, str]:
    """Validate every seed's config, then submit all; run ids, or {field: message}."""
    if isinstance(seeds, str):
        return {"seeds": seeds}
    changes = overrides({**values, "device": device}, base)
    configs = []
    for seed in seeds:
        try:
            build_config(preset, {**changes, "seed": seed})
        except ConfigError as e:
            return e.errors
        configs.append({**changes, "seed": seed})
    limit_errors = ui.client().validate(preset, configs[0])
    if limit_errors:
        return limit_errors
    group = (name or preset) + f" ×{len(seeds)}" if len(seeds) > 1 else None
    ids = []
    try:
        for seed, cfg in zip(seeds, configs):
            run_name = f"{name or preset} · seed {seed}" if len(seeds) > 1 else (name or "")
            ids.append(ui.client().submit(preset, cfg, name=run_name, submitter=st.session_state.get("submitter", ""),
                                          group=group, token=ui.token()))
    except (ConfigError, LimitError) as e:
        return e.errors
    except AuthError as e:
        return {"token": f"{e} — enter it under 'Access token' in the sidebar"}
    return ids


ui.status_panel()
st.title("Launch a run")
st.caption("Pick a preset, change any field, launch. The config is checked here, field by field, "
           "before anything reaches a worker.")
preset = pick_preset()
base = build_config(preset).to_dict()
errors: dict[str, str] = st.session_state.get("launch_errors", {}).get(preset, {})

with st.form("launch_form"):
    st.subheader("2 · Run")
    c1, c2, c3 = st.columns([2, 1, 1])
    name = c1.text_input("Run name", key="launch_name", placeholder=f"e.g. {preset} baseline",
                         help="Shown in the Runs table; the seed is appended when launching several seeds.")
    seeds_text = c2.text_input("Seeds", value=str(base["seed"]), key=f"launch_seeds_{preset}",
                               help="One seed launches one run; '1, 2, 3' or '1-5' launch one run per seed, "
                                    "as a group (compare groups on the Compare page).")
    if "seeds" in errors or "seed" in errors:
        c2.error(errors.get("seeds") or errors.get("seed"), icon=":material/warning:")
    device = c3.radio("Device", list(DEVICES), index=list(DEVICES).index(base["device"]), key=f"launch_device_{preset}",
                      format_func=DEVICES.get, horizontal=True,
                      help="auto: the GPU when the worker that takes the run has one, else its CPU. GPU runs wait "
                           "for a GPU worker.")
    if "device" in errors:
        c3.error(errors["device"], icon=":material/warning:")
    st.subheader("3 · Configuration")
    values = config_form(base, key_prefix=f"cfg_{preset}_", errors=errors)
    others = {k: v for k, v in errors.items() if k not in values and k not in ("seeds", "seed", "device")}
    for k, v in others.items():
        st.error(f"**{k}**: {v}", icon=":material/warning:")
    submitted = st.form_submit_button("Launch", icon=":material/rocket_launch:", type="primary")

if errors:
    st.error(f"{len(errors)} field{'s' * (len(errors) != 1)} to fix before launching: {', '.join(errors)}. "
             "Nothing was enqueued.", icon=":material/warning:")

if submitted:
    if not ui.redis_ok():
        st.error("Redis is not reachable, so nothing can be launched now (see the sidebar).", icon=":material/power_off:")
    else:
        result = launch(preset, values, base, name.strip(), parse_seeds(seeds_text), device)
        if isinstance(result, dict):
            st.session_state["launch_errors"] = {preset: result}
            st.rerun()
        st.session_state["launch_errors"] = {}
        st.session_state["launched"] = result
        ui.go_to_run(result[0])
