"""An offline feature browser for any SAE or transcoder: what every feature of a dictionary does, at corpus scale.

| module | job |
|---|---|
| `sources` | the corpus: texts, a text/JSONL(.gz) file streamed, or activation shards |
| `state` | what is kept per feature, in memory bounded by the options (top slots, band samples, counts) |
| `harvest` | one streamed, resumable pass: `harvest_features` → `FeatureHarvest` |
| `weights` | logit effects through the final norm, decoder neighbours; self-explanation, steering preview |
| `data` | `BrowserData` and the plain per-page views the renderer formats |
| `render` | HTML from the views (a dumb step) |
| `site` | `build_feature_browser` (the `interp features` command), `write_site`, `render_browser` |
| `links` | finding a built browser and linking its pages from experiments and the report |

```python
from interp.browser import build_feature_browser
build_feature_browser(model, dictionary, "corpus.jsonl", "results/features")
```
"""

from interp.browser.data import BrowserData
from interp.browser.harvest import Context, FeatureHarvest, HarvestConfig, dictionary_fingerprint, harvest_features
from interp.browser.links import (
    browser_for, experiment_links, feature_links, feature_page, find_browsers, markdown_link,
)
from interp.browser.site import (
    BROWSER_KIND, build_feature_browser, check_browser_target, load_browser_data, render_browser, write_site,
)
from interp.browser.weights import WeightAnalysis, analyse_weights, logit_effects, nearest_features, steering_preview

__all__ = [
    "BROWSER_KIND", "BrowserData", "Context", "FeatureHarvest", "HarvestConfig", "WeightAnalysis", "analyse_weights",
    "browser_for", "build_feature_browser", "check_browser_target", "dictionary_fingerprint", "experiment_links",
    "feature_links", "feature_page", "find_browsers", "harvest_features", "load_browser_data", "logit_effects",
    "markdown_link", "nearest_features", "render_browser", "steering_preview", "write_site",
]
