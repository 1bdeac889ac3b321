"""A frozen general-text set for measuring forgetting.

Short encyclopedic paragraphs on topics far from business reports, written for
this project. They never change: the cross-entropy of a model on them is
comparable across runs, so a rise after fine-tuning means the adapter made the
model worse at ordinary English.
"""

OOD_PARAGRAPHS: tuple[tuple[str, str], ...] = (
    (
        "astronomy",
        "The Moon orbits the Earth about once every twenty-seven days. Because it rotates on its axis in "
        "the same amount of time, the same side always faces the Earth. The far side was first photographed by a "
        "spacecraft in 1959.",
    ),
    (
        "biology",
        "Honeybees live in colonies that may contain tens of thousands of workers and a single queen. Workers "
        "collect nectar and pollen, build wax comb and care for the young. A forager tells other bees where flowers "
        "are by performing a waggle dance.",
    ),
    (
        "geography",
        "The Nile flows north through eastern Africa into the Mediterranean Sea. For thousands of years its "
        "yearly flood left fertile silt along the banks, which allowed farming in an otherwise dry region.",
    ),
    (
        "chemistry",
        "Water is made of two hydrogen atoms bonded to one oxygen atom. Its molecules attract each other "
        "through hydrogen bonds, which is why water has a high boiling point for such a small molecule and why ice "
        "floats on liquid water.",
    ),
    (
        "history",
        "The printing press with movable metal type was developed in Europe in the fifteenth century. Books "
        "became cheaper and more common, and ideas spread faster than they had when every copy was written by hand.",
    ),
    (
        "music",
        "A violin has four strings tuned in fifths and is played with a bow strung with horsehair. The sound "
        "is amplified by the hollow wooden body, and the player changes the pitch by pressing the strings against "
        "the fingerboard.",
    ),
    (
        "geology",
        "Volcanoes form where molten rock from deep inside the Earth reaches the surface. Some erupt "
        "explosively and throw ash high into the air, while others release slow rivers of lava that cool into "
        "dark rock.",
    ),
    (
        "sport",
        "A marathon is a running race of a little more than forty-two kilometres. Runners train for months to "
        "build endurance, and during the race they drink water and eat small snacks to keep their energy up.",
    ),
    (
        "cooking",
        "Bread rises because yeast feeds on sugars in the dough and releases carbon dioxide gas. Kneading "
        "develops gluten, a network of proteins that traps the gas and gives the loaf its soft, airy texture.",
    ),
    (
        "physics",
        "Light travels through empty space at about three hundred thousand kilometres per second. When it "
        "passes from air into water or glass it slows down and bends, which is why a straw in a glass looks broken.",
    ),
    (
        "zoology",
        "Octopuses have eight flexible arms lined with suckers and can change the colour of their skin in a "
        "fraction of a second. They are known for solving puzzles and for escaping from tanks in aquariums.",
    ),
    (
        "botany",
        "Plants make their own food through photosynthesis. Their leaves capture sunlight and use its energy "
        "to turn water and carbon dioxide into sugar, releasing oxygen into the air as a by-product.",
    ),
    (
        "architecture",
        "Gothic cathedrals are known for pointed arches, ribbed vaults and flying buttresses. These "
        "features carried the weight of the roof outward, so the walls could hold large windows of stained glass.",
    ),
    (
        "weather",
        "Rainbows appear when sunlight shines through raindrops. Each drop bends and reflects the light, "
        "splitting it into colours from red on the outside of the arc to violet on the inside.",
    ),
    (
        "literature",
        "A sonnet is a poem of fourteen lines that follows a fixed rhyme scheme. Poets have used the form "
        "for centuries to write about love, time and death, often turning the argument in the final lines.",
    ),
    (
        "oceans",
        "Tides are caused mainly by the pull of the Moon on the oceans. Most coasts see two high tides and "
        "two low tides each day, and the difference between them is greatest around the new and full moon.",
    ),
    (
        "medicine",
        "Vaccines train the immune system to recognise a germ without causing the disease. After "
        "vaccination the body keeps memory cells that can respond quickly if the real germ appears later.",
    ),
    (
        "transport",
        "The first public railway to carry passengers with steam locomotives opened in the early "
        "nineteenth century. Within a few decades railways linked cities across many countries and changed how "
        "people travelled.",
    ),
    (
        "mathematics",
        "A prime number is a whole number greater than one that can be divided evenly only by one and by "
        "itself. The first primes are two, three, five, seven and eleven, and there are infinitely many of them.",
    ),
    (
        "art",
        "Impressionist painters worked outdoors to capture changing light and colour. They used quick, visible "
        "brushstrokes and often painted ordinary scenes such as gardens, rivers and busy streets.",
    ),
    (
        "insects",
        "Butterflies begin life as caterpillars that eat leaves and grow quickly. Each caterpillar then forms "
        "a chrysalis, inside which its body is rebuilt into the winged adult.",
    ),
    (
        "mountains",
        "Mount Everest, on the border of Nepal and China, is the highest mountain above sea level. Climbers "
        "usually need bottled oxygen near the summit because the air there holds about a third of the oxygen found at "
        "sea level.",
    ),
    (
        "language",
        "Many languages borrow words from one another. English, for example, took words such as ballet "
        "from French, piano from Italian and kindergarten from German.",
    ),
    (
        "birds",
        "Penguins are birds that cannot fly but swim with great speed, using their wings as flippers. Most "
        "species live in the Southern Hemisphere, and emperor penguins breed during the Antarctic winter.",
    ),
    (
        "energy of stars",
        "The Sun is a star made mostly of hydrogen and helium. In its core, hydrogen nuclei fuse into "
        "helium, releasing the energy that reaches the Earth as light and heat about eight minutes later.",
    ),
)
